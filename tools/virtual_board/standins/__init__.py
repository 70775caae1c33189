# MicroPython-side code of the virtual board (stand-ins and harness); it runs on the unix port,
# never on CPython and never on a real board. This file only makes setuptools ship the folder.
