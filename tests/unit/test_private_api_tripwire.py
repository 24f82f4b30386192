"""Tripwire: the private (and overridden) members of Faust, mode, aiokafka and rocksdict we use.

The batch path (``stream/bulk.py``, ``stream/app.py``, ``stream/produce.py``) reaches into
private members of its libraries and overrides some of their methods. Nothing in those
libraries promises that such a member survives a release, so ``pyproject.toml`` caps each of
them below its next minor, and this test checks, for the installed (pinned) versions, that
every member listed in :data:`MEMBERS` still exists on the class it is used on and that
callables still take the parameters our code passes them (overrides: that the library still
calls them; re-implemented library code: that its source is unchanged). An upgrade that
breaks one fails here, naming the member and the code of ours that uses it, instead of in
production.

:data:`MEMBERS` is the one list. More tests keep it complete and current:

- the source scan reads every module under ``src/engagement_index/`` and fails on a
  ``._name`` (or ``getattr(x, "_name")``) that is neither defined by our own code nor listed
  in :data:`MEMBERS` (best effort: a name we define ourselves anywhere counts as ours);
- the override scan fails on a method or attribute one of our top-level subclasses of a
  library class defines that the library class has too, without a ``kind="override"`` entry;
- a private entry whose name appears nowhere under ``src/engagement_index/`` fails as stale;
- ``pyproject.toml`` must cap each library in the table below its next minor.

When one of these fails after a change to the batch path, add (or remove) the entry below:
the library class the object is an instance of and, for a callable, the signature as our
code calls it (the messages find the files and functions of ours that use a private name).
When it fails after an upgrade, re-check the batch path against the new library code, then
update the entry and raise the pin in ``pyproject.toml`` and ``constraints.txt`` together.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import re
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pytest
from mode.services import ServiceTask
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "engagement_index"

#: top-level module -> the distribution that ships it (whose version the messages name)
DIST_OF_MODULE = {
    "faust": "faust-streaming",
    "mode": "mode-streaming",
    "aiokafka": "aiokafka",
    "rocksdict": "rocksdict",
    "kafka": "kafka-python",
}

RECOVERY = "faust.tables.recovery:Recovery"
CONSUMER = "faust.transport.drivers.aiokafka:Consumer"  # what BulkConsumer subclasses
FETCHER = "faust.transport.consumer:Fetcher"
STORE = "faust.stores.rocksdb:Store"
AIOPRODUCER = "aiokafka.producer.producer:AIOKafkaProducer"
AIOCONSUMER = "aiokafka.consumer.consumer:AIOKafkaConsumer"
CONSUMER_THREAD = "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread"
BULK_CONSUMER = "engagement_index.stream.bulk:BulkConsumer"

Kind = Literal["method", "attribute", "override"]
Call = Literal["sync", "await", "async for"]


@dataclass(frozen=True)
class Member:
    """A member of a library class that our code relies on.

    ``owner`` is the library class whose instances our code uses (the member may come from
    one of its bases). ``signature`` is the parameter list as :func:`render` writes it:
    names, ``/`` and ``*`` markers, ``*args``/``**kwargs``, and a trailing ``=`` on
    parameters with a default (annotations and default values are ignored), i.e. what our
    calls rely on. ``call`` is how our code calls it. ``called_from`` (overrides) names the
    library function whose source must still call the member, or our override is dead code.
    ``source_sha256`` (first 16 hex digits) fingerprints library code that ours copies or
    depends on line by line: any change to it, even in a patch release, needs a re-read.

    ``used_by`` says what of ours relies on a *public* member; for a private one, the
    messages name the files and functions the source scan finds it in.
    """

    dist: str
    owner: str
    name: str
    kind: Kind
    signature: str | None = None
    call: Call | None = None
    used_by: str = ""
    ours: str | None = None  # override: "module:Class" of our subclass that defines it
    called_from: str | None = None  # override: "module:Class.function" that calls it
    source_sha256: str | None = None
    why: str = ""

    @property
    def label(self) -> str:
        return f"{self.owner.rpartition(':')[2]}.{self.name}"

    @property
    def private(self) -> bool:
        return bool(PRIVATE.match(self.name))


#: _name or __name, not __dunder__
PRIVATE = re.compile(r"^_(?!_)\w*$|^__\w*(?<!__)$")

_SRC = "src/engagement_index/"
_DRAIN = f"{_SRC}stream/bulk.py BulkConsumer._drain_messages"
_APPLY = f"{_SRC}stream/bulk.py apply_changelog"
_SEEK = f"{_SRC}stream/bulk.py BulkConsumer._seek_uncommitted_to_beginning"
_SEND = f"{_SRC}stream/produce.py send_batched"
_COMMITTED = f"{_SRC}stream/bulk.py _seek_to_committed"
_WRITES = f"the batch's table writes ({_SRC}stream/), in the raw_mode layout of Faust's Store"

# fmt: off
MEMBERS: tuple[Member, ...] = (
    # ---------------------------------------------------------------- Faust table recovery
    Member("faust-streaming", RECOVERY, "_active_events_received_at", "attribute"),
    Member("faust-streaming", RECOVERY, "_standby_events_received_at", "attribute"),
    Member("faust-streaming", RECOVERY, "_last_flush_at", "attribute"),
    Member("faust-streaming", RECOVERY, "_set_recovery_ended", "method", "(self)", "sync"),
    Member("faust-streaming", RECOVERY, "_slurp_changelogs", "method", "(self)", "await",
           used_by=_APPLY, source_sha256="6f289a0225f88390",
           why="apply_changelog does what it does per record, for a whole fetch"),
    # public, but apply_changelog uses them as _slurp_changelogs does
    Member("faust-streaming", RECOVERY, "active_tps", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "standby_tps", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "tp_to_table", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "in_recovery", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "active_offsets", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "standby_offsets", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "signal_recovery_end", "attribute", used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "need_recovery", "method", "(self)", "sync",
           used_by=_APPLY),
    Member("faust-streaming", RECOVERY, "flush_buffers", "method", "(self)", "sync",
           used_by=_APPLY),
    Member("faust-streaming", STORE, "apply_changelog_batch", "method",
           "(self, batch, to_key, to_value)", "sync", used_by=_APPLY,
           source_sha256="ec7d6bb0b21540ce",
           why="not called: apply_changelog re-implements it (a raw-mode write batch per "
           "partition, a delete per tombstone, then each partition's persisted offset), so "
           "its source is fingerprinted; the signature is checked so that the entry fails "
           "when the method changes shape"),
    # ------------------------------------------------------------------- Faust consumer
    Member("faust-streaming", CONSUMER, "_drain_messages", "override", "(self, fetcher)",
           "await", ours=BULK_CONSUMER, called_from=f"{FETCHER}._fetcher",
           source_sha256="6b6a22fa66e689d5",
           why="BulkConsumer._drain_messages is a rewrite of it"),
    Member("faust-streaming", CONSUMER, "perform_seek", "override", "(self)", "await",
           ours=BULK_CONSUMER, called_from=f"{RECOVERY}._resume_streams"),
    Member("faust-streaming", CONSUMER, "seek_to_committed", "override", "(self)", "await",
           ours=BULK_CONSUMER, called_from="faust.transport.consumer:Consumer.perform_seek"),
    Member("faust-streaming", CONSUMER_THREAD, "_ensure_consumer", "method", "(self)", "sync"),
    Member("mode-streaming", CONSUMER_THREAD, "call_thread", "method",
           "(self, fun, *args, **kwargs)", "await", used_by=_COMMITTED),
    Member("aiokafka", AIOCONSUMER, "seek_to_committed", "method", "(self, *partitions)",
           used_by=_COMMITTED, source_sha256="0268d063aebf454d",
           why="_seek_to_committed is it for all the assigned partitions, one request"),
    Member("aiokafka", AIOCONSUMER, "_coordinator", "attribute"),
    Member("aiokafka", AIOCONSUMER, "assignment", "method", "(self)", "sync",
           used_by=_COMMITTED),
    Member("aiokafka", AIOCONSUMER, "seek", "method", "(self, partition, offset)", "sync",
           used_by=_COMMITTED),
    Member("aiokafka", "aiokafka.consumer.group_coordinator:GroupCoordinator",
           "fetch_committed_offsets", "method", "(self, partitions)", "await",
           used_by=_COMMITTED, source_sha256="8c78a6c43285988c",
           why="_seek_to_committed reads None for a partition it leaves out (no commit, an "
               "unknown topic), as aiokafka's committed() does"),
    Member("faust-streaming", CONSUMER, "_read_offset", "attribute"),
    Member("faust-streaming", CONSUMER, "_commit_every", "attribute"),
    Member("faust-streaming", CONSUMER, "_n_acked", "attribute"),
    Member("faust-streaming", CONSUMER, "_add_gap", "method",
           "(self, tp, offset_from, offset_to)", "await"),
    Member("faust-streaming", CONSUMER, "_thread", "attribute"),
    Member("faust-streaming", CONSUMER_THREAD,
           "earliest_offsets", "method", "(self, *partitions)", "await",
           used_by=_SEEK),
    Member("mode-streaming", CONSUMER, "_stopped", "attribute"),
    Member("mode-streaming", FETCHER, "_stopped", "attribute"),
    # public members the rewritten drain loop calls as Faust's own loop does
    Member("faust-streaming", CONSUMER, "getmany", "method", "(self, timeout)", "async for",
           used_by=_DRAIN),
    Member("faust-streaming", CONSUMER, "track_message", "method", "(self, message)", "sync",
           used_by=_DRAIN),
    Member("faust-streaming", CONSUMER, "ack", "method", "(self, message)", "sync",
           used_by=_DRAIN),
    Member("faust-streaming", CONSUMER, "commit", "method",
           "(self, topics=, start_new_transaction=)", "await", used_by=_DRAIN),
    Member("faust-streaming", CONSUMER, "seek", "method", "(self, partition, offset)", "await",
           used_by=_SEEK),
    Member("faust-streaming", CONSUMER, "callback", "attribute", used_by=_DRAIN),
    Member("faust-streaming", CONSUMER, "suspend_flow", "attribute", used_by=_DRAIN),
    Member("faust-streaming", CONSUMER, "consumer_stopped_errors", "attribute", used_by=_DRAIN),
    Member("mode-streaming", CONSUMER, "wait_first", "method", "(self, *coros, timeout=)",
           "await", used_by=_DRAIN),
    # ---------------------------------------------------------- Faust app, transport, store
    Member("faust-streaming", "faust.tables.manager:TableManager", "on_start", "override",
           "(self)", "await", ours="engagement_index.stream.bulk:BulkTableManager",
           called_from="mode.services:Service._actually_start", source_sha256="35aa469ac19e96ab",
           why="BulkTableManager.on_start is Faust's without its 1 s sleep"),
    Member("faust-streaming", "faust.tables.manager:TableManager", "_update_channels", "method",
           "(self)", "await"),
    Member("faust-streaming", "faust.app.base:App", "_new_transport", "override", "(self)",
           "sync", ours="engagement_index.stream.bulk:BulkApp",
           called_from="faust.app.base:App.transport"),
    Member("faust-streaming", "faust.transport.drivers.aiokafka:Transport", "Consumer",
           "override", ours="engagement_index.stream.bulk:BulkTransport",
           called_from="faust.transport.base:Transport.create_consumer"),
    Member("faust-streaming", "faust.transport.base:Transport", "__init__", "method",
           "(self, url, app, loop=)", "sync",
           used_by=f"{_SRC}stream/bulk.py BulkApp._new_transport"),
    Member("faust-streaming", STORE, "revoke_partitions", "override", "(self, table, tps)",
           "sync", ours="engagement_index.stream.bulk:BulkStore",
           called_from=f"{STORE}.on_rebalance", source_sha256="cdee628c6d415ae0",
           why="BulkStore.revoke_partitions is Faust's without its gc.collect() when nothing "
           "of the table is revoked"),
    Member("faust-streaming", STORE, "_dbs", "attribute"),
    Member("mode-streaming", "mode.utils.imports:FactoryMapping", "aliases", "attribute",
           used_by=f"{_SRC}stream/bulk.py STORE_SCHEME (the store URL scheme of BulkStore)"),
    Member("faust-streaming", STORE, "_db_for_partition", "method", "(self, partition)",
           "sync"),
    Member("faust-streaming", STORE, "_visible_items", "method", "(self, db)", "sync"),
    Member("faust-streaming", STORE, "set_persisted_offset", "method", "(self, tp, offset)",
           "sync", used_by=_WRITES),
    Member("faust-streaming", "faust.transport.drivers.aiokafka:Producer", "_ensure_producer",
           "method", "(self)", "sync"),
    # ------------------------------------------------------------------------- aiokafka
    Member("aiokafka", AIOPRODUCER, "_partition", "method",
           "(self, topic, partition, key, value, serialized_key, serialized_value)", "sync"),
    Member("aiokafka", AIOPRODUCER, "client", "attribute", used_by=_SEND),
    Member("aiokafka", AIOPRODUCER, "_partitioner", "attribute"),
    Member("aiokafka", "aiokafka.client:AIOKafkaClient", "cluster", "attribute", used_by=_SEND),
    Member("aiokafka", "aiokafka.client:AIOKafkaClient", "_wait_on_metadata", "method",
           "(self, topic)", "await"),
    Member("aiokafka", AIOPRODUCER, "create_batch", "method", "(self)", "sync", used_by=_SEND),
    Member("aiokafka", AIOPRODUCER, "send_batch", "method",
           "(self, batch, topic, *, partition)", "await", used_by=_SEND),
    Member("aiokafka", AIOPRODUCER, "send", "method",
           "(self, topic, value=, key=, partition=, timestamp_ms=, headers=)", "await",
           used_by=_SEND),
    Member("aiokafka", "aiokafka.producer.message_accumulator:BatchBuilder", "append",
           "method", "(self, *, timestamp, key, value, headers=)", "sync", used_by=_SEND),
    # ------------------------------------------------------------------------ rocksdict
    Member("rocksdict", "rocksdict:WriteBatch", "__init__", "method", "(raw_mode=)", "sync",
           used_by=_WRITES),
    Member("rocksdict", "rocksdict:WriteBatch", "put", "method",
           "(self, /, key, value, column_family=)", "sync", used_by=_WRITES),
    Member("rocksdict", "rocksdict:WriteBatch", "delete", "method",
           "(self, /, key, column_family=)", "sync", used_by=_WRITES),
    Member("rocksdict", "rocksdict:Rdict", "write", "method",
           "(self, /, write_batch, write_opt=)", "sync", used_by=_WRITES),
    Member("rocksdict", "rocksdict:Rdict", "get", "method",
           "(self, /, key, default=, read_opt=)", "sync",
           used_by=f"{_SRC}stream/app.py Worker.process_batch"),
)
# fmt: on


# ------------------------------------------------------------------------------ helpers
def unwrap(raw: Any) -> Any:
    """The function behind a property, static/class method or mode ``@Service.task``."""
    if isinstance(raw, property):
        return raw.fget
    if isinstance(raw, staticmethod | classmethod):
        return raw.__func__
    if isinstance(raw, ServiceTask):
        return raw.fun
    return raw


def resolve(path: str) -> Any:
    """``"pkg.module:Class.attr"`` -> the object, unwrapped as :func:`unwrap` does."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = unwrap(inspect.getattr_static(obj, part))
    return obj


def render(sig: inspect.Signature) -> str:
    """A signature as names and kinds only: ``(self, /, key, *, value=, **kwargs)``."""
    out: list[str] = []
    params = list(sig.parameters.values())
    P = inspect.Parameter
    for i, p in enumerate(params):
        before = params[i - 1].kind if i else None
        if p.kind is P.KEYWORD_ONLY and before not in (P.KEYWORD_ONLY, P.VAR_POSITIONAL):
            out.append("*")
        prefix = "*" if p.kind is P.VAR_POSITIONAL else "**" if p.kind is P.VAR_KEYWORD else ""
        out.append(prefix + p.name + ("=" if p.default is not P.empty else ""))
        if p.kind is P.POSITIONAL_ONLY and (
            i + 1 == len(params) or params[i + 1].kind is not P.POSITIONAL_ONLY
        ):
            out.append("/")
    return "(" + ", ".join(out) + ")"


def call_style(fn: Any) -> Call:
    if inspect.isasyncgenfunction(fn):
        return "async for"
    if inspect.iscoroutinefunction(fn):
        return "await"
    return "sync"


def fingerprint(fn: Any) -> str:
    source = textwrap.dedent(inspect.getsource(fn)).strip()
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def installed(dist: str) -> str:
    return metadata.version(dist)


def assigned_on_self(cls: type, name: str) -> bool:
    """True if some class in ``cls``'s MRO assigns or annotates ``self.<name>`` in its code.

    Instance attributes set in ``__init__`` (or later) are not on the class; reading the
    library's source finds them without building a connected consumer or recovery.
    """
    for klass in cls.__mro__:
        if klass is object:
            continue
        if name in vars(klass) or name in vars(klass).get("__annotations__", {}):
            return True
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == name
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    return True
    return False


def where_used(member: Member) -> str:
    """``file function, ...``: our override, or where the scan finds a private member, or
    else the entry's ``used_by``."""
    if member.ours is not None:
        module, _, cls = member.ours.partition(":")
        return f"src/{module.replace('.', '/')}.py {cls}.{member.name}"
    if member.private:
        found = sorted({f"{u.file} {u.function}" for u in get_scan().uses if u.name == member.name})
        if found:
            return ", ".join(found)
    return member.used_by or "src/engagement_index/"


def check(member: Member) -> list[str]:
    """What is wrong with ``member`` in the installed library (empty: nothing)."""
    head = f"{member.dist} {installed(member.dist)}: {member.label}"
    tail = f"used by {where_used(member)} — re-check the batch path before raising the pin"
    try:
        owner = resolve(member.owner)
    except (ImportError, AttributeError) as exc:
        return [f"{head}: its class {member.owner} is missing ({exc}); {tail}"]
    if member.kind == "attribute":
        if hasattr(owner, member.name) or assigned_on_self(owner, member.name):
            return []
        return [f"{head} is missing; {tail}"]
    if not hasattr(owner, member.name):
        return [f"{head} is missing; {tail}"]
    problems: list[str] = []
    value = unwrap(inspect.getattr_static(owner, member.name))
    if member.signature is not None:
        target = value
        if member.name == "__init__" and not inspect.isfunction(value):
            target = owner  # a C extension type: its constructor's signature
        try:
            actual = render(inspect.signature(target))
        except (TypeError, ValueError) as exc:
            problems.append(f"{head}: its signature cannot be read ({exc}); {tail}")
        else:
            if actual != member.signature:
                problems.append(
                    f"{head} changed signature: {actual}, our code relies on "
                    f"{member.signature}; {tail}"
                )
    if member.call is not None and inspect.isfunction(value):
        style = call_style(value)
        if style != member.call:
            problems.append(f"{head} is now {style!r}, our code calls it {member.call!r}; {tail}")
    if member.source_sha256 is not None:
        actual_sha = fingerprint(value)
        if actual_sha != member.source_sha256:
            problems.append(
                f"{head} source changed (sha256 {actual_sha}, checked {member.source_sha256}):"
                f" {member.why}; diff the library change into {where_used(member)}, then"
                " update source_sha256 in tests/unit/test_private_api_tripwire.py"
            )
    if member.kind == "override":
        problems.extend(check_override(member, head, tail, value))
    return problems


def check_override(member: Member, head: str, tail: str, base_value: Any) -> list[str]:
    """Our override still overrides it, as the table says, and the library still calls it."""
    assert member.ours is not None, f"{member.label}: an override entry needs ours="
    problems: list[str] = []
    ours = resolve(member.ours)
    mine = f"{member.ours}.{member.name}"
    our_value = unwrap(inspect.getattr_static(ours, member.name))
    if inspect.isclass(base_value):
        if not (inspect.isclass(our_value) and issubclass(our_value, base_value)):
            problems.append(
                f"{head} is now {base_value!r}; {mine} ({our_value!r}) does not subclass it; {tail}"
            )
    elif member.signature is not None:
        ours_sig = render(inspect.signature(our_value))
        if ours_sig != member.signature:
            problems.append(
                f"{mine} takes {ours_sig}, the tripwire entry for {member.label} says "
                f"{member.signature}: one of them is wrong"
            )
        if member.call is not None and call_style(our_value) != member.call:
            problems.append(f"{mine} is not {member.call!r} as {head} is")
    if member.called_from is not None:
        caller = resolve(member.called_from)
        if not re.search(rf"\.{re.escape(member.name)}\(", inspect.getsource(caller)):
            problems.append(
                f"{head}: {member.called_from} no longer calls it, so {mine} would never run;"
                f" {tail}"
            )
    return problems


# ------------------------------------------------------------------- the member checks
@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{m.dist}:{m.label}")
def test_member_is_as_our_code_uses_it(member: Member) -> None:
    problems = check(member)
    assert not problems, "\n".join(problems)


def test_each_library_is_capped_below_its_next_minor() -> None:
    """pyproject.toml admits the installed (= pinned) version and not the next minor."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().split()
        if "==" in line
    )
    problems: list[str] = []
    for dist in sorted({m.dist for m in MEMBERS}):
        version = Version(installed(dist))
        if pins.get(dist) != str(version):
            problems.append(
                f"{dist} {version} is installed but constraints.txt pins {pins.get(dist)}: the"
                " tripwire checks the installed version (pip install -c constraints.txt ...)"
            )
        requirement = requirements.get(dist)
        if requirement is None:
            problems.append(f"{dist}: no entry in pyproject.toml [project] dependencies")
            continue
        next_minor = Version(f"{version.major}.{version.minor + 1}.0")
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{dist}: pyproject.toml {requirement} excludes {version}")
        if requirement.specifier.contains(next_minor, prereleases=True):
            problems.append(
                f"{dist}: pyproject.toml {requirement} admits {next_minor}; cap it below the "
                "next minor (our code uses its private members: see this test)"
            )
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- the source scan
ATTR_ACCESS = {"getattr", "setattr", "hasattr", "delattr"}


@dataclass(frozen=True)
class Use:
    file: str
    line: int
    name: str
    function: str  # the enclosing function's qualified name, or "<module>"


@dataclass
class ClassInfo:
    file: str
    module: str
    name: str
    body: set[str]  # the names its body defines
    bases: list[str]  # resolved through the file's imports: "faust.App", "BulkApp", ...


class Scan:
    """What ``src/engagement_index/`` defines itself, uses privately, and overrides."""

    def __init__(self) -> None:
        self.ours: set[str] = set()
        self.uses: list[Use] = []
        self.texts: dict[str, str] = {}
        self.classes: list[ClassInfo] = []
        trees: dict[str, ast.Module] = {}
        for path in sorted(SRC.rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            self.texts[rel] = path.read_text()
            trees[rel] = tree = ast.parse(self.texts[rel], filename=rel)
            module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
            self._read(rel, module, tree)
        self.library_subclasses = self._library_subclasses()
        for tree in trees.values():
            self._collect_ours(tree)

    def _read(self, rel: str, module: str, tree: ast.Module) -> None:
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else (a.name.split(".")[0])
                    )
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self._walk(rel, tree, [])
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = [self._dotted(b, aliases) for b in node.bases]
                self.classes.append(
                    ClassInfo(
                        rel, module, node.name, self._body_names(node), [b for b in bases if b]
                    )
                )

    def _walk(self, rel: str, node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = [*scope, child.name]
            function = ".".join(scope) or "<module>"
            if isinstance(child, ast.Attribute) and PRIVATE.match(child.attr):
                self.uses.append(Use(rel, child.lineno, child.attr, function))
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id in ATTR_ACCESS
                and len(child.args) >= 2
                and isinstance(child.args[1], ast.Constant)
                and isinstance(child.args[1].value, str)
                and PRIVATE.match(child.args[1].value)
            ):
                self.uses.append(Use(rel, child.lineno, child.args[1].value, function))
            self._walk(rel, child, inner)

    @staticmethod
    def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    @staticmethod
    def _body_names(cls: ast.ClassDef) -> set[str]:
        names: set[str] = set()
        for node in cls.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        return names

    def _library_subclasses(self) -> set[str]:
        """Our top-level classes that derive (maybe through ours) from a library class."""
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for c in self.classes:
                if c.name not in found and any(
                    b.split(".")[0] in DIST_OF_MODULE or b in found for b in c.bases
                ):
                    found.add(c.name)
                    changed = True
        return found

    def _collect_ours(self, tree: ast.Module) -> None:
        """Every name our code defines: functions, classes, class and module attributes,
        ``__slots__``, keyword names such as ``set_defaults(_run=...)``, and ``self.x = ...``
        in classes that do not derive from a library class (in one that does, ``self._x =``
        may well write the library's attribute, as ``BulkConsumer`` does with ``_n_acked``).
        """
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.ours.add(node.name)
                if isinstance(node, ast.ClassDef):
                    self.ours |= self._body_names(node)
                    if node.name not in self.library_subclasses:
                        self.ours |= self._self_assigned(node)
            elif isinstance(node, ast.keyword) and node.arg:
                self.ours.add(node.arg)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                self.ours |= {
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
        for node in tree.body:
            if isinstance(node, ast.Assign):
                self.ours.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.ours.add(node.target.id)

    @staticmethod
    def _self_assigned(cls: ast.ClassDef) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(cls):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for t in targets:
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id in ("self", "cls")
                ):
                    names.add(t.attr)
        return names

    def overrides(self) -> Iterator[tuple[ClassInfo, str, str]]:
        """(our class, name, library class) for each library member one of ours redefines.

        Our top-level subclasses of library classes only (a class defined inside a function,
        such as the web views, is not reached).
        """
        for c in self.classes:
            if c.name not in self.library_subclasses:
                continue
            cls = getattr(importlib.import_module(c.module), c.name)
            library = [k for k in cls.__mro__ if k.__module__.split(".")[0] in DIST_OF_MODULE]
            for attr in sorted(c.body):
                if attr.startswith("__") and attr.endswith("__") and attr != "__init__":
                    continue
                for klass in library:
                    if attr in vars(klass) or attr in vars(klass).get("__annotations__", {}):
                        yield c, attr, f"{klass.__module__}:{klass.__name__}"
                        break


@functools.cache
def get_scan() -> Scan:
    return Scan()


def test_every_private_member_we_use_has_an_entry() -> None:
    scan = get_scan()
    listed = {m.name for m in MEMBERS}
    missing = sorted(
        {(u.file, u.line, u.function, u.name) for u in scan.uses}
        - {(u.file, u.line, u.function, u.name) for u in scan.uses if u.name in scan.ours | listed}
    )
    assert not missing, (
        "private members of library objects used without a tripwire entry:\n"
        + "\n".join(f"  {file}:{line} ({fn}): .{name}" for file, line, fn, name in missing)
        + "\nadd a Member(...) for each to MEMBERS in tests/unit/test_private_api_tripwire.py"
        " (the library class the object is an instance of, and for a callable the signature"
        " our code calls); if the name is ours, define it where the scan sees it (a def, a"
        " class attribute, or self.<name> = ... in a class that is not a library subclass)"
    )


def test_every_override_of_a_library_member_has_an_entry() -> None:
    listed = {(m.ours, m.name) for m in MEMBERS if m.kind == "override"}
    missing = [
        (c, name, library)
        for c, name, library in get_scan().overrides()
        if (f"{c.module}:{c.name}", name) not in listed
    ]
    assert not missing, (
        "library members our subclasses override without a tripwire entry:\n"
        + "\n".join(
            f"  {c.file}: {c.name}.{name} overrides {library}.{name}"
            for c, name, library in missing
        )
        + "\nadd a Member(kind='override', ours=..., called_from=...) for each to MEMBERS in"
        " tests/unit/test_private_api_tripwire.py, or rename ours if the clash is new"
    )


def test_no_stale_entries() -> None:
    """Every private entry is still used somewhere under src/engagement_index/."""
    texts = get_scan().texts.values()
    stale = [
        m
        for m in MEMBERS
        if m.private and not any(re.search(rf"\b{re.escape(m.name)}\b", t) for t in texts)
    ]
    assert not stale, "entries in MEMBERS that src/engagement_index/ no longer uses:\n" + (
        "\n".join(f"  {m.dist} {m.label}: remove its entry" for m in stale)
    )
