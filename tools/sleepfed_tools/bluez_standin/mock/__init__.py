"""The BlueZ stand-in's server side, imported by ``../template.py`` inside the python-dbusmock
server process (never by the controller in ``..``): the ids BlueZ uses, the radio world of
sensors, the device, GATT and adapter objects, and GLib timers."""
