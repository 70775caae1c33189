# Wi-Fi and time, each bounded in time. On ports without `network` (the unix port) the host's
# network is already up.
import time

_EPOCH_2000 = 946684800


def wifi_up(cfg):
    """Connect to the provisioned Wi-Fi within wifi_timeout_s; True when connected."""
    try:
        import network
    except ImportError:
        return True
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():
        return True
    wifi = cfg.get("wifi") or {}
    wlan.connect(wifi.get("ssid", ""), wifi.get("password", ""))
    deadline = time.ticks_add(time.ticks_ms(), int(cfg["wifi_timeout_s"] * 1000))
    failed = _failures(network)
    while not wlan.isconnected():
        if wlan.status() in failed or time.ticks_diff(deadline, time.ticks_ms()) <= 0:
            wlan.active(False)
            return False
        time.sleep_ms(50)
    return True


def _failures(network):
    # Statuses after which waiting longer does not help (not every port defines all of them).
    out = []
    for name in ("STAT_NO_AP_FOUND", "STAT_WRONG_PASSWORD", "STAT_CONNECT_FAIL"):
        code = getattr(network, name, None)
        if code is not None:
            out.append(code)
    return out


def trusted_now():
    """Unix time after a successful NTP sync, else None (then expiry is not checked)."""
    try:
        import ntptime
        ntptime.settime()
    except Exception:
        return None
    now = time.time()
    if time.gmtime(0)[0] == 2000:  # ports whose epoch is 2000-01-01
        now += _EPOCH_2000
    return now
