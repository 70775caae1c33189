"""The publisher's commands against a running server: `ota publish`, `ota releases`,
`ota rollout`, `ota channels`, `ota roots`, `ota devices`, `ota audit`.

They find the server in --server / $MPOTA_SERVER and the publisher token in $MPOTA_TOKEN or
--token-file (never on the command line, where `ps` would show it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from signing.manifest import MICROPYTHON_FLOOR
from tools.errors import UserError
from tools.output import Column, echo_json, emit, json_option, print_table, when
from tools.timefmt import iso_utc

TOKEN_ENV = "MPOTA_TOKEN"  # noqa: S105 -- the variable's name, not a secret
SERVER_ENV = "MPOTA_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8080"
# The CA an https server's certificate chains to (a fleet's private CA); else the system's.
CA_ENV = "MPOTA_CA"
DAY = 86400


# -- client commands --------------------------------------------------------------------------


def _client(server: str, token_file: Path | None) -> Any:
    from tools.api_client import ApiClient

    if token_file is not None:
        try:
            # As for fleet.yaml's secret files: a token others can read is already leaked.
            mode = token_file.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise UserError(f"token file {token_file} is accessible to group/others (mode "
                                f"{mode & 0o777:o}); chmod 600 it")
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UserError(f"cannot read token file {token_file}: {err.strerror}") from err
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserError(f"no publisher token: set ${TOKEN_ENV} or give --token-file "
                        f"(create one with `ota tokens create NAME --data DIR`)")
    return ApiClient(server, token, ca=_env_ca())


def client_for(server: str, token_file: Path | None) -> Any:
    """The ApiClient of `server` with the token of `token_file` or $MPOTA_TOKEN (UserError
    when there is none, or the file is readable by others)."""
    return _client(server, token_file)


def _env_ca() -> Path | None:
    value = os.environ.get(CA_ENV, "").strip()
    return Path(value) if value else None


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--token-file", type=click.Path(dir_okay=False, exists=True,
                                                        path_type=Path),
                        help=f"file holding the publisher token [default: ${TOKEN_ENV}]")(func)
    func = click.option("--server", envvar=SERVER_ENV, default=DEFAULT_SERVER,
                        show_default=True, help=f"server URL [env {SERVER_ENV}]")(func)
    return func


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--server and --token-file, for commands of other modules that talk to the server."""
    return _client_options(func)


@contextmanager
def _api_errors() -> Iterator[None]:
    from tools.api_client import ApiClientError

    try:
        yield
    except ApiClientError as err:
        raise UserError(str(err)) from err


def api_errors() -> Any:
    """The server's refusals as UserError (a context manager)."""
    return _api_errors()


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@click.command("publish")
@click.argument("app_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--version", "version", required=True, help="semantic version, e.g. 1.2.0")
@click.option("--channel", default=None, help="start a rollout of the release on this channel")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="one-stage rollout to this percentage [default: the server's policy]")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, exists=True,
                                                         path_type=Path),
              default=None, help="the rollout's JSON policy (docs/operations.md)")
@click.option("--key", "key_paths", multiple=True, required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a release private key (repeat for a threshold) [passphrase: "
                   "$MPOTA_KEY_PASSPHRASE]")
@click.option("--board", "boards", multiple=True, required=True,
              help="a compatible board, as fleet.yaml names it (repeat)")
@click.option("--fleet", "fleet_path", type=click.Path(dir_okay=False, exists=True,
                                                       path_type=Path),
              default=None, help="fleet.yaml whose boards --board must name and fit "
                                 "[default: ./fleet.yaml if present]")
@click.option("--sequence", type=click.IntRange(min=0), default=None,
              help="anti-rollback sequence [default: the server assigns the next one]")
@click.option("--entry", default="app_main", show_default=True, help="the app's entry module")
@click.option("--app", "app", default=None, help="app name [default: APP_DIR's name]")
@click.option("--min-micropython", default=MICROPYTHON_FLOOR, show_default=True,
              help="the oldest MicroPython the app runs on")
@click.option("--expires-days", type=click.IntRange(min=1), default=365, show_default=True,
              help="days until boards stop accepting the release")
@click.option("--mpy", is_flag=True, help="compile .py to .mpy with mpy-cross")
@click.option("--deflate", is_flag=True, help="send files deflated when that is smaller")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="keep the bundle here [default: a temporary directory]")
@click.option("--allow-downgrade-version", is_flag=True,
              help="roll out a version lower than the channel's current one (its sequence "
                   "still rises, so boards take it)")
@json_option
@_client_options
def publish_cmd(app_dir: Path, version: str, channel: str | None, percent: float | None,
                policy_file: Path | None, key_paths: tuple[Path, ...], boards: tuple[str, ...],
                fleet_path: Path | None,
                sequence: int | None, entry: str, app: str | None, min_micropython: str,
                expires_days: int, mpy: bool, deflate: bool, out_dir: Path | None,
                allow_downgrade_version: bool, as_json: bool, server: str,
                token_file: Path | None) -> None:
    """Build APP_DIR, sign it locally, upload the missing blobs, register, roll out.

    APP_DIR is a folder whose entry module (app_main.py) defines main(). The server checks
    the signature, version and file sizes before any blob is uploaded.
    """
    from signing.bundle import build_bundle, sign_bundle
    from signing.errors import BundleError, KeyFileError, TrustError
    from tools.board_fit import check_fits, fleet_for_publish, known_boards
    from tools.cmd_keys import load_signing_key

    policy = _read_policy(percent, policy_file)
    if policy is not None and channel is None:
        raise UserError("--policy needs --channel: the channel to roll the release out on")
    fleet = fleet_for_publish(fleet_path)
    targets = known_boards(fleet, boards) if fleet is not None else []
    client = _client(server, token_file)
    if channel is not None:
        # Before anything is signed or uploaded: the server refuses it at the rollout anyway.
        _check_downgrade(client, channel, app or app_dir.resolve().name, version,
                         allow_downgrade_version)
    if sequence is None:
        # Asked before signing (the sequence is inside the signed manifest); the server never
        # gives one sequence to two versions, so concurrent publishes do not collide.
        with _api_errors():
            sequence = client.reserve_sequence(app or app_dir.resolve().name, version)
    with tempfile.TemporaryDirectory(prefix="ota-publish-") as scratch:
        target = out_dir or Path(scratch) / "bundle"
        created = int(time.time())
        try:
            signers = [load_signing_key(path) for path in key_paths]
            bundle = build_bundle(app_dir, target, version=version, sequence=sequence,
                                  boards=boards, entry=entry, min_micropython=min_micropython,
                                  mpy=mpy, deflate=deflate, created=created,
                                  expires=created + expires_days * DAY, app=app)
            check_fits(targets, sum(f.size for f in bundle.manifest.files), bundle.manifest.app)
            sign_bundle(target, signers)
        except (BundleError, KeyFileError) as err:
            raise UserError(str(err)) from err
        except TrustError as err:
            raise UserError(f"{type(err).__name__}: {err}") from err
        manifest = bundle.manifest
        with _upload_progress() as progress, _api_errors():
            result = client.publish(target, channel, policy=policy, percent=percent,
                                    progress=progress,
                                    allow_downgrade_version=allow_downgrade_version)
    if as_json:
        echo_json({**result.release, "new": result.new, "uploaded": result.uploaded,
                   "already_present": result.skipped, "rollout": result.rollout})
        return
    registered = result.release["sequence"]
    if not result.new:
        click.echo(f"{manifest.app} {manifest.version} is already registered as sequence "
                   f"{registered} with the same content: nothing new published")
    else:
        click.echo(f"published {manifest.app} {manifest.version} sequence {registered}: "
                   f"{len(result.uploaded)} blob(s) uploaded, {len(result.skipped)} already "
                   f"there")
    if result.rollout is not None:
        _print_rollout(result.rollout)


def _check_downgrade(client: Any, channel: str, app: str, version: str, allowed: bool) -> None:
    """Refuse (UserError) a version lower than what `channel` points at for `app`, unless
    `allowed`; then warn on stderr."""
    from ota_server.versions import is_lower

    with _api_errors():
        status = client.rollout_status(channel)
    rollout = status.get("rollout")
    current = rollout["release"] if rollout and rollout["state"] in ("active", "paused") \
        else status.get("base")
    if current is None or current["app"] != app:
        return
    try:
        lower = is_lower(version, current["version"])
    except ValueError as err:
        raise UserError(f"--version: {err}") from err
    if not lower:
        return
    text = (f"{app} {version} is a lower version than {current['version']}, which channel "
            f"{channel!r} runs now (its sequence still rises, so boards would take it)")
    if not allowed:
        raise UserError(f"{text}: give --allow-downgrade-version if that is what you want")
    _warn(text)


def _warn(text: str) -> None:
    click.echo(f"ota: warning: {text}", err=True)


def _read_policy(percent: float | None, policy_file: Path | None) -> Any:
    """The JSON policy in `policy_file` (None without one); UserError when it is unreadable
    or given with --percent."""
    if percent is not None and policy_file is not None:
        raise UserError("give --percent or --policy, not both")
    if policy_file is None:
        return None
    try:
        return json.loads(policy_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{policy_file}: not a JSON policy ({err})") from err


@contextmanager
def _upload_progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar for publish's uploads on stderr when stderr is a terminal (stdout stays
    clean for --json); None, no bar, otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("upload", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


# -- releases ---------------------------------------------------------------------------------

@click.group("releases")
def releases_group() -> None:
    """Releases registered on the server: list and yank."""


def _pointed(channels: list[dict[str, str]]) -> str:
    return ", ".join(f"{c['channel']} ({c['as']})" for c in channels) or "-"


def _release_state(rel: dict[str, Any]) -> str:
    if rel.get("yanked"):
        return f"yanked {iso_utc(rel['yanked'])}"
    return f"expired {iso_utc(rel['expires'])}" if rel.get("expired") else "offered"


_RELEASE_COLUMNS = (
    Column("APP", "app"), Column("VERSION", "version"),
    Column("SEQUENCE", "sequence", align="right"), Column("CREATED", "created", when),
    # a key id is a SHA-256: its first 16 hex digits tell keys apart on a screen
    Column("SIGNERS", "signers", lambda ids: ", ".join(i[:16] for i in ids) or "-"),
    Column("CHANNELS", "channels", _pointed), Column("STATE", "state"),
    Column("EXPIRES", "expires", when))


@releases_group.command("list")
@click.option("--app", default=None, help="only this app's releases")
@json_option
@_client_options
def releases_list(app: str | None, as_json: bool, server: str, token_file: Path | None) -> None:
    """List releases: version, sequence, signers, channels, state.

    Each release with its version, sequence, creation time, the key ids that signed it, the
    channels pointing at it, and whether it is offered, yanked or expired."""
    with _api_errors():
        releases = _client(server, token_file).list_releases(app)
    rows = [{**rel, "state": _release_state(rel)} for rel in releases]
    emit(releases, _RELEASE_COLUMNS, rows, as_json=as_json, empty="no releases")


@releases_group.command("yank")
@click.argument("app")
@click.argument("version")
@click.option("--force", is_flag=True,
              help="also abort the rollouts of it (else a rollout of it refuses the yank)")
@_client_options
def releases_yank(app: str, version: str, force: bool, server: str,
                  token_file: Path | None) -> None:
    """Stop offering APP VERSION to any board; boards that run it keep it."""
    with _api_errors():
        result = _client(server, token_file).yank(app, version, force=force)
    for channel in result.get("aborted", []):
        click.echo(f"aborted the rollout of {app} {version} on {channel}")
    click.echo(f"yanked {app} {version} (sequence {result['sequence']}): offered to no board "
               f"from now on")


# -- rollouts ---------------------------------------------------------------------------------

def _expiry(release: dict[str, Any], now: int) -> str:
    """`expires <time>`, or `EXPIRED <time>` once past it (then no board is offered it)."""
    expires = release.get("expires")
    if expires is None:
        return "expires -"
    gone = release.get("expired", expires <= now)
    return f"{'EXPIRED' if gone else 'expires'} {iso_utc(expires)}"


def _print_rollout(status: dict[str, Any]) -> None:
    now = int(time.time())
    base = status.get("base")
    click.echo(f"channel {status['channel']}: base "
               + (f"{base['app']} {base['version']} (sequence {base['sequence']}), "
                  f"{_expiry(base, now)}" if base else "none"))
    rollout = status.get("rollout")
    if rollout is None:
        click.echo("  no rollout")
        return
    rel = rollout["release"]
    stage = rollout["current_stage"]
    where = f"tag {stage['tag']}" if "tag" in stage else f"{stage['percent']}%"
    click.echo(f"  rollout of {rel['app']} {rel['version']} (sequence {rel['sequence']}): "
               f"{rollout['state']}, stage {rollout['stage'] + 1}/{len(rollout['stages'])} "
               f"({where}), {_expiry(rel, now)}")
    if rel.get("expired"):
        click.echo("  the release has expired: no board is offered it; publish a new version")
    if rollout.get("reason"):
        click.echo(f"  reason: {rollout['reason']}")
    counts = rollout["counts"]
    click.echo("  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    _print_reach(status)


def _print_reach(status: dict[str, Any]) -> None:
    """Each stage's reach ("N of M boards eligible"), how far the rollout is from pausing or
    advancing on its own, and the server's warnings (on stderr)."""
    for text in status.get("warnings", []):
        _warn(text)
    rollout = status.get("rollout")
    if rollout is None or "reach" not in rollout:
        return
    for stage in rollout["reach"]:
        mark = ">" if stage["stage"] == rollout["stage"] else " "
        click.echo(f"  {mark} stage {stage['stage'] + 1} ({stage['name']}): {stage['text']}")
    click.echo(f"  {_progress_text(rollout['progress'])}")


def _print_stages(status: dict[str, Any]) -> None:
    """`ota rollout status`'s stages: a table of each stage's reach, then how far the rollout
    is from pausing or advancing on its own; the server's warnings on stderr."""
    for text in status.get("warnings", []):
        _warn(text)
    rollout = status.get("rollout")
    if rollout is None or "reach" not in rollout:
        return
    rows = [{"stage": f"{'>' if s['stage'] == rollout['stage'] else ' '} {s['stage'] + 1}",
             "name": s["name"], "text": s["text"]} for s in rollout["reach"]]
    print_table([Column("STAGE", "stage"), Column("BOARDS", "name"), Column("REACH", "text")],
                rows, title="stages (> the current one)")
    click.echo(_progress_text(rollout["progress"]))


def _progress_text(p: dict[str, Any]) -> str:
    """`auto-pause after N more failures ...; advances after N more confirmations ...`."""
    rule = (f"({p['failures']} of {p['results']} results failed; it pauses above "
            f"{p['failure_threshold']:.0%} once {p['min_results']} results are in)")
    pause = ("no automatic pause" if p["failures_to_pause"] is None
             else f"auto-pause after {p['failures_to_pause']} more failure(s) {rule}")
    if p["confirmations_to_advance"] is None:
        return f"{pause}; no automatic advance from this stage"
    return (f"{pause}; advances after {p['confirmations_to_advance']} more confirmation(s) "
            f"({p['confirmed']} of {p['success_target']})")


@click.group("rollout")
def rollout_group() -> None:
    """Staged rollouts per channel."""


@rollout_group.command("status")
@click.argument("channel")
@json_option
@_client_options
def rollout_status(channel: str, as_json: bool, server: str, token_file: Path | None) -> None:
    """Show the channel's base release and rollout with deployment counts."""
    with _api_errors():
        status = _client(server, token_file).rollout_status(channel)
    if as_json:
        echo_json(status)
        return
    now = int(time.time())
    rows = []
    if status.get("base"):
        rows.append({**status["base"], "role": "base", "state": "-", "stage": None})
    rollout = status.get("rollout")
    if rollout is not None:
        stage = rollout["current_stage"]
        where = f"tag {stage['tag']}" if "tag" in stage else f"{stage['percent']}%"
        rows.append({**rollout["release"], "role": "rollout", "state": rollout["state"],
                     "stage": f"{rollout['stage'] + 1}/{len(rollout['stages'])} ({where})"})
    for row in rows:  # a board is offered no expired release: say so where the time is
        gone = row.get("expired", row["expires"] <= now)
        row["expiry"] = f"{'EXPIRED ' if gone else ''}{when(row['expires'])}"
    print_table([Column("ROLE", "role"), Column("APP", "app"), Column("VERSION", "version"),
                 Column("SEQUENCE", "sequence", align="right"), Column("STATE", "state"),
                 Column("STAGE", "stage"), Column("EXPIRES", "expiry")], rows,
                title=f"channel {status['channel']}", empty="no base release and no rollout")
    _print_stages(status)
    if rollout is None:
        return
    if rollout["release"].get("expired"):
        click.echo("the release has expired: no board is offered it; publish a new version")
    if rollout.get("reason"):
        click.echo(f"reason: {rollout['reason']}")
    print_table([Column("STATUS", "status"), Column("BOARDS", "boards", align="right")],
                [{"status": k, "boards": v} for k, v in rollout["counts"].items()],
                title="deployments of the rollout's release")


@rollout_group.command("start")
@click.argument("channel")
@click.option("--app", "app", required=True, help="the release's app")
@click.option("--version", "version", default=None, help="the release's version, e.g. 1.2.0")
@click.option("--sequence", type=int, default=None,
              help="the release's sequence (instead of --version)")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="one stage to this percentage (100: everyone now)")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, exists=True,
                                                         path_type=Path),
              default=None, help="a JSON rollout policy (docs/operations.md)")
@click.option("--allow-downgrade-version", is_flag=True,
              help="roll out a version lower than the channel's current one")
@_client_options
def rollout_start(channel: str, app: str, version: str | None, sequence: int | None,
                  percent: float | None, policy_file: Path | None,
                  allow_downgrade_version: bool, server: str, token_file: Path | None) -> None:
    """Point CHANNEL at a release (--version V) with a staged policy.

    The release is named by its version (or by --sequence N); a version lower than the
    channel's current one needs --allow-downgrade-version."""
    if (version is None) == (sequence is None):
        raise UserError("give the release's --version (or its --sequence), one of them")
    if percent is not None and policy_file is not None:
        raise UserError("give --percent or --policy, not both")
    policy = None
    if policy_file is not None:
        try:
            policy = json.loads(policy_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{policy_file}: not a JSON policy ({err})") from err
    with _api_errors():
        status = _client(server, token_file).rollout_start(
            channel, policy, app=app, sequence=sequence, version=version, percent=percent,
            allow_downgrade_version=allow_downgrade_version)
    _print_rollout(status)


def _rollout_action(name: str, help_text: str) -> None:
    @rollout_group.command(name, help=help_text)
    @click.argument("channel")
    @_client_options
    def action(channel: str, server: str, token_file: Path | None) -> None:
        with _api_errors():
            client = _client(server, token_file)
            status = getattr(client, f"rollout_{name}")(channel)
        _print_rollout(status)


_rollout_action("pause", "Stop offering the release to boards that have not started it.")
_rollout_action("resume", "Resume a paused rollout.")
_rollout_action("abort", "Stop the rollout; boards keep what they run, the base stays.")
_rollout_action("advance", "Move the rollout to its next stage by hand.")


# -- channels ---------------------------------------------------------------------------------

@click.group("channels")
def channels_group() -> None:
    """Channels: their boards, base releases and rollouts.

    Under `ota serve --fleet`, the channels fleet.yaml declares; else any that has boards or
    a release."""


def _release_text(rel: dict[str, Any] | None) -> str:
    if rel is None:
        return "-"
    flag = " (yanked)" if rel.get("yanked") else " (expired)" if rel.get("expired") else ""
    return f"{rel['app']} {rel['version']}{flag}"


def _channel_row(doc: dict[str, Any]) -> dict[str, Any]:
    rollout = doc.get("rollout")
    row = {"channel": doc["channel"], "boards": doc["boards"],
           "base": _release_text(doc.get("base")), "rollout": None, "stage": None,
           "reach": None}
    if rollout is not None:
        stage = rollout["reach"][rollout["stage"]]
        row.update(rollout=f"{_release_text(rollout['release'])} {rollout['state']}",
                   stage=f"{rollout['stage'] + 1}/{len(rollout['stages'])} ({stage['name']})",
                   reach=stage["text"])
    return row


_CHANNEL_COLUMNS = (
    Column("CHANNEL", "channel"), Column("BASE", "base"), Column("ROLLOUT", "rollout"),
    Column("STAGE", "stage"), Column("REACH", "reach"),
    Column("BOARDS", "boards", align="right"))


@channels_group.command("list")
@json_option
@_client_options
def channels_list(as_json: bool, server: str, token_file: Path | None) -> None:
    """List channels: boards, base release, rollout and its reach.

    Each channel (declared in the fleet, or with boards or a release) with its board count,
    base release, rollout (state, stage) and how many boards the stage reaches."""
    with _api_errors():
        channels = _client(server, token_file).channels()
    emit(channels, _CHANNEL_COLUMNS, [_channel_row(c) for c in channels], as_json=as_json,
         empty="no channels")


# -- audit ------------------------------------------------------------------------------------

@click.group("audit")
def audit_group() -> None:
    """The server's audit log of state-changing publisher calls."""


_AUDIT_COLUMNS = (
    Column("WHEN", "at", when), Column("WHO", "actor"), Column("SCOPE", "scope"),
    Column("WHAT", "action"), Column("TARGET", "target"),
    Column("STATUS", "status", align="right"), Column("OUTCOME", "outcome"))


@audit_group.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="the newest this many entries")
@click.option("--actor", default=None, help="only calls made with the token of this name")
@json_option
@_client_options
def audit_list(limit: int, actor: str | None, as_json: bool, server: str,
               token_file: Path | None) -> None:
    """Who changed what, when, and how it ended (oldest first).

    Every state-changing publisher call: its time, the token's name and scope, the route and
    what it was about, the HTTP status and `ok` or the error's code."""
    with _api_errors():
        entries = _client(server, token_file).audit(limit, actor)
    emit(entries, _AUDIT_COLUMNS, entries, as_json=as_json, empty="no audit entries")


# -- roots ------------------------------------------------------------------------------------

@click.group("roots")
def roots_group() -> None:
    """Root metadata on the server (the trust anchor boards rotate to)."""


@roots_group.command("upload")
@click.argument("root_json", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_client_options
def roots_upload(root_json: Path, server: str, token_file: Path | None) -> None:
    """Upload root metadata N+1 (from `ota keys rotate`); the server verifies the rotation."""
    with _api_errors():
        result = _client(server, token_file).upload_root(root_json.read_bytes())
    click.echo(f"root metadata version {result['version']} accepted")


@roots_group.command("list")
@json_option
@_client_options
def roots_list(as_json: bool, server: str, token_file: Path | None) -> None:
    """Show the root metadata versions the server holds and which one is the latest."""
    with _api_errors():
        result = _client(server, token_file).list_roots()
    rows = [{"version": v, "latest": "yes" if v == result["latest"] else "no"}
            for v in result["versions"]]
    emit(result, [Column("VERSION", "version", align="right"), Column("LATEST", "latest")],
         rows, as_json=as_json, empty="no root metadata")


# -- devices ----------------------------------------------------------------------------------

@click.group("devices")
def devices_group() -> None:
    """The board registry and inventory."""


_DEVICE_COLUMNS = [Column("DEVICE", "device_id"), Column("BOARD", "board"),
                   Column("CHANNEL", "channel"), Column("APP", "app"),
                   Column("VERSION", "version"), Column("STATUS", "state"),
                   Column("LAST SEEN", "last_seen", when)]


def _device_row(dev: dict[str, Any]) -> dict[str, Any]:
    return {**dev, "state": "revoked" if dev.get("revoked") else dev.get("last_status")}


@devices_group.command("list")
@click.option("--channel", default=None, help="only boards of this channel")
@json_option
@_client_options
def devices_list(channel: str | None, as_json: bool, server: str,
                 token_file: Path | None) -> None:
    """List the registered boards with what they run and when they were last seen."""
    with _api_errors():
        devices = _client(server, token_file).list_devices(channel)
    emit(devices, _DEVICE_COLUMNS, [_device_row(d) for d in devices], as_json=as_json,
         empty="no boards")


# What `ota devices show` prints about a board, in order: (field, how it is shown).
_DEVICE_FIELDS: list[tuple[str, Callable[[Any], str]]] = [
    ("device_id", str), ("board", str), ("channel", str),
    ("tags", lambda tags: ", ".join(tags) or "-"), ("app", str), ("version", str),
    ("sequence", str), ("slot", str), ("micropython", str), ("root_version", str),
    ("mem_free", str), ("last_status", str), ("last_error", str), ("last_seen", when),
    ("created", when), ("revoked", when)]


@devices_group.command("show")
@click.argument("device_id")
@json_option
@_client_options
def devices_show(device_id: str, as_json: bool, server: str, token_file: Path | None) -> None:
    """Show one board, its inventory and its deployment history (each outcome, reason, time)."""
    with _api_errors():
        doc = _client(server, token_file).device(device_id)
    if as_json:
        echo_json(doc)
        return
    print_table([Column("FIELD", "field"), Column("VALUE", "value")],
                [{"field": key, "value": None if doc.get(key) is None else show(doc[key])}
                 for key, show in _DEVICE_FIELDS])
    click.echo()
    print_table([Column("TIME", "at", when), Column("APP", "app"), Column("VERSION", "version"),
                 Column("SEQUENCE", "sequence", align="right"), Column("OUTCOME", "status"),
                 Column("REASON", "reason")], doc.get("history", []),
                title="deployment history", empty="no reports yet")


@devices_group.command("revoke")
@click.argument("device_id")
@_client_options
def devices_revoke(device_id: str, server: str, token_file: Path | None) -> None:
    """Refuse every further request from DEVICE_ID."""
    with _api_errors():
        _client(server, token_file).revoke_device(device_id)
    click.echo(f"revoked {device_id}")


@devices_group.command("add")
@click.argument("device_id")
@click.option("--public-key", "public_key", required=True,
              help="base64 of the 65-byte uncompressed P-256 point, or @FILE holding it")
@click.option("--board", required=True, help="board type")
@click.option("--channel", default="stable", show_default=True,
              help="the channel whose releases the board takes")
@click.option("--tag", "tags", multiple=True, help="a tag (repeat)")
@_client_options
def devices_add(device_id: str, public_key: str, board: str, channel: str,
                tags: tuple[str, ...], server: str, token_file: Path | None) -> None:
    """Register a board by hand (the provisioning station does this for you)."""
    text = public_key
    if public_key.startswith("@"):
        try:
            text = Path(public_key[1:]).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UserError(f"cannot read {public_key[1:]}: {err.strerror}") from err
    try:
        point = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise UserError("--public-key is not base64") from err
    with _api_errors():
        _client(server, token_file).register_device(device_id, point, board=board,
                                                    channel=channel, tags=tags)
    click.echo(f"registered {device_id}")


def register(cli: click.Group) -> None:
    for command in (publish_cmd, releases_group, rollout_group, channels_group, roots_group,
                    devices_group, audit_group):
        cli.add_command(command)
