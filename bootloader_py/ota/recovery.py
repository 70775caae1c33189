# Setting a damaged scratch directory aside (docs/board.md, Flash and power cuts).
#
# A power cut in a FAT directory update can leave the directory's sector erased or torn: its
# entries then read as garbage (names that are not UTF-8, sizes beyond the flash, start
# clusters anywhere). Removing such an entry would free whatever clusters it points to, other
# files' among them, so none is ever touched: the directory is renamed to <parent>/.bad<N>,
# which rewrites only its entry in the parent's directory, and a fresh empty one takes its
# place. The clusters it held stay allocated: leaked space, at most _MAX_BAD directories of it
# per parent. Only the client's scratch directories are set aside this way (the slot being
# staged, /ota/part, /ota/staged): the active slot and /ota's own files are never recoverable
# here. Loaded only when a damaged directory is met: the ordinary update never imports it.
import os

from micropython import const

from ota.fail import UpdateFailed

_MAX_BAD = const(8)  # directories set aside per parent before the client gives up


def set_aside(path):
    """Rename the damaged directory `path` to the first free <parent>/.bad<N>; returns the new
    name, or None (and says why) when _MAX_BAD are there already: the board needs its flash
    reprovisioned. OSError when the flash refuses the rename."""
    parent = path[:path.rfind("/")]
    for n in range(_MAX_BAD):
        bad = parent + "/.bad" + str(n)
        try:
            os.stat(bad)
        except OSError:
            os.rename(path, bad)
            print("ota: damaged directory", path, "set aside as", bad)
            return bad
    print("ota: damaged directory", path, "kept:", _MAX_BAD, "set aside already")
    return None


def replace(path):
    """Set the damaged directory `path` aside and make a fresh empty one in its place.
    UpdateFailed when it cannot be set aside (set_aside), OSError when the flash refuses."""
    if set_aside(path) is None:
        raise UpdateFailed("damaged directory " + path + ": " + str(_MAX_BAD)
                           + " set aside already, reprovision the board")
    os.mkdir(path)
