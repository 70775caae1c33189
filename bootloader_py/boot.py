# boot.py: picks the app slot before anything else runs. Never updated over the air.
# One guard: if the OTA code itself fails, boot the slot the state record names (main.py
# reads the same record), or slot a, the factory app, when no record could be read.
import sys

_slot = "a"
try:
    from ota import state

    _st = state.BootState()
    _slot = _st.active  # a failed write below leaves this record on flash: main.py sees it
    _slot = _st.boot()
except Exception as e:
    sys.print_exception(e)
_st = None  # the app's heap
sys.path.insert(1, "/app/" + _slot)
