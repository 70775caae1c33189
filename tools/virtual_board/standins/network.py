# STAND-IN for MicroPython's `network` module on the virtual board (unix port); not the real one.
# WLAN connects or fails as the harness configures (VirtualBoard(wifi_ok=...)); the host's own
# network is what sockets really use.
# mypy: ignore-errors
import _vb_flash

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_CONNECT_FAIL = 203

_interfaces = {}
_hostname = "mpota-virtual"


def hostname(name=None):
    global _hostname
    if name is None:
        return _hostname
    _hostname = name
    return None


class _Interface:
    def __init__(self, interface_id):
        self._id = interface_id
        self._active = False
        self._status = STAT_IDLE
        self._ssid = None

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._status = STAT_IDLE
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        # The key is never stored nor printed.
        if not self._active:
            raise OSError("Wifi Not Started")
        self._ssid = ssid
        self._status = STAT_GOT_IP if _vb_flash.wifi_ok else STAT_NO_AP_FOUND

    def disconnect(self):
        self._status = STAT_IDLE

    def isconnected(self):
        return self._status == STAT_GOT_IP

    def status(self, param=None):
        if param == "rssi":
            return -50
        return self._status

    def ifconfig(self, config=None):
        if config is not None:
            return None
        if self._status == STAT_GOT_IP:
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kwargs):
        if kwargs:
            return None
        if args == ("mac",):
            return _vb_flash.unique_id
        if args == ("ssid",):
            return self._ssid or ""
        if args == ("hostname",):
            return _hostname
        raise ValueError("unknown config param")

    def scan(self):
        return []


def WLAN(interface_id=STA_IF):
    # A board has one object per interface: WLAN(STA_IF) twice gives the same state.
    if interface_id not in _interfaces:
        _interfaces[interface_id] = _Interface(interface_id)
    return _interfaces[interface_id]
