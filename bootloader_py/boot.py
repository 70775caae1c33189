# boot.py: picks the app slot before anything else runs. Never updated over the air.
# One guard: if the OTA code itself fails, boot slot a, the factory app.
import sys

try:
    from ota import state

    _slot = state.BootState().boot()
except Exception as e:
    sys.print_exception(e)
    _slot = "a"
sys.path.insert(1, "/app/" + _slot)
