# boot.py: picks the app slot before anything else runs. Never updated over the air.
# One guard: if the OTA code itself fails, boot the slot the state record names (main.py
# reads the same record), or slot a, the factory app, when no record could be read.
import sys

# A ROMFS client (docs/board.md, Filesystem) must come before "" (the filesystem's /ota/ holds
# only data); firmware mounts /rom but may not put it first. A board without one: no harm.
if "/rom" in sys.path:
    sys.path.remove("/rom")
sys.path.insert(0, "/rom")
_slot = "a"
try:
    from ota import state

    _st = state.BootState()
    _slot = _st.active  # a failed write below leaves this record on flash: main.py sees it
    _slot = _st.boot()
except Exception as e:
    sys.print_exception(e)
_st = None  # the app's heap
sys.path.insert(2, "/app/" + _slot)  # after "/rom" and ""
