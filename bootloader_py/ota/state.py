# The boot state: which slot is active, whether it is on trial, what each slot holds.
#
# Record fields (all written by this module only):
#   seq     record sequence (records.py)
#   active  "a" or "b"
#   ok      1 when the active slot is confirmed, 0 while it is on trial
#   trial   trial boots started so far (counted by boot.py before the app runs)
#   tries   trial boots allowed before rollback (from config trial_boots at install time)
#   slots   {"a": {"app", "version", "sequence", "entry"} or None, "b": ...}
#   reject  highest sequence that was rolled back; never installed again
#   note    a report for the client to queue on its next run ({"status", ...}) or None
#   app     the app a board provisioned without one was bound to at its first verified offer
#           (BootState.bind; absent until then: ota/client.py, bound_app)
from ota import records

ROOT = "/"
BASE = ("/ota/state0", "/ota_rec/state1")  # records.py: one copy in each directory
SLOT_DIR = "/app/"


def slot_path(slot):
    return SLOT_DIR + slot


def other(slot):
    return "b" if slot == "a" else "a"


def factory():
    """The state of a board that has never recorded one: slot a, confirmed, unknown app."""
    return {"seq": 0, "active": "a", "ok": 1, "trial": 0, "tries": 3,
            "slots": {"a": None, "b": None}, "reject": 0, "note": None}


def note(info, status, version, reason):
    """The report a boot-state change leaves for the client to send. A release installed over
    USB (ota/offline.py marks its slot) says so: the server records it, outside any rollout."""
    n = {"status": status, "app": info["app"], "sequence": info["sequence"],
         "version": version, "reason": reason}
    if info.get("offline"):
        n["offline"] = 1
    return n


class BootState:
    """The newest valid boot record plus where it was read from."""

    def __init__(self):
        rec, self.index = records.read(BASE)
        self.rec = rec if rec is not None else factory()

    def save(self):
        self.index = records.write(BASE, self.rec, self.index)

    @property
    def active(self):
        return self.rec["active"]

    @property
    def on_trial(self):
        return not self.rec["ok"]

    def info(self, slot=None):
        """What the slot holds ({"app", "version", "sequence", "entry"}), or None."""
        return self.rec["slots"].get(slot or self.rec["active"])

    def boot(self):
        """Decide the slot for this boot (ota/trial.py); returns it. Writes at most once."""
        from ota import trial
        return trial.boot(self)

    def flip(self, slot, info, tries):
        """Make `slot` (fully staged and verified) the active one, on trial. One write."""
        rec = self.rec
        rec["active"] = slot
        rec["ok"] = 0
        rec["trial"] = 0
        rec["tries"] = tries
        rec["slots"][slot] = info
        rec["note"] = note(info, "installed", info["version"], "")
        self.save()

    def confirm(self):
        """Confirm the active slot; returns False when there was nothing to confirm."""
        rec = self.rec
        if rec["ok"]:
            return False
        rec["ok"] = 1
        rec["trial"] = 0
        info = self.info()
        rec["note"] = note(info, "confirmed", info["version"], "")
        self.save()
        return True

    def bind(self, app):
        """Record `app` as the one whose releases this board takes (a board provisioned
        without an app, at its first verified offer, before a byte of it is staged). One
        write: a power cut leaves the board bound or, as before, unbound."""
        self.rec["app"] = app
        self.save()

    def take_note(self):
        """The pending report, cleared from the state (the caller has queued it first)."""
        note = self.rec["note"]
        if note is not None:
            self.rec["note"] = None
            self.save()
        return note
