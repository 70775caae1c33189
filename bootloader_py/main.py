# main.py: the OTA check when due, then the active app (ota/run.py). Never updated over the air.
try:
    from ota import run
except Exception as e:
    import sys

    sys.print_exception(e)
    run = None
if run is not None:
    run.main()
else:
    import app_main  # noqa: F401  the default entry when the client cannot even load
