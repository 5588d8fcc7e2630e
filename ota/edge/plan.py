"""Pure update planning: a verified assignment and the TUF targets it names in, an :class:`UpdatePlan` out.

Like python-tuf's ``TrustedMetadataSet`` beside its ``Updater``, this module does no I/O: the agent
(:mod:`ota.edge.agent`) fetches and verifies the director's assignment and refreshes the image repository
with ``ngclient``, then hands the parsed documents here, and gets back either a plan the installer can carry
out or a typed :class:`~ota.edge.errors.VerificationError`. Everything a test needs to drive the decision
is a value: no server, no socket, no file.

Checks, in order:

* target names that could escape a directory if anything ever used them as paths are refused;
* the director and TUF agree on the length and sha256 of the target (and of the delta, when it applies);
* the target fits ``max_download_bytes``;
* the signed custom fields are the documents of :mod:`ota.core.targets` (strictly parsed): a model
  target's, a delta's (whose base and result must be the director's), a self-test target's;
* the self-test vectors fit ``max_selftest_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from ota.core.errors import DocumentFormatError
from ota.core.manifest import Assignment, DeltaRef, TargetRef
from ota.core.targets import DeltaTargetCustom, ModelTargetCustom, SelfTestTargetCustom
from ota.edge.errors import TargetMetadataError, VerificationError
from ota.edge.state import ArtifactRef, UpdatePlan

Doc = TypeVar("Doc")


class SignedTarget(Protocol):
    """What planning reads of a TUF target (python-tuf's ``TargetFile`` has it)."""

    @property
    def length(self) -> int: ...

    @property
    def hashes(self) -> dict[str, str]: ...

    @property
    def custom(self) -> Any: ...


@dataclass(frozen=True)
class Repository:
    """Where the image repository serves targets, as the agent's enrolment and trusted root say.

    Attributes:
        targets_url: Base URL of the targets.
        consistent_snapshot: Whether target files are served under ``<sha256>.<basename>`` (TUF's
            consistent snapshots), which Range downloads must use too.
    """

    targets_url: str
    consistent_snapshot: bool = True

    def url(self, name: str, sha256: str) -> str:
        """The download URL of target ``name`` whose signed sha256 is ``sha256``."""
        directory, sep, basename = name.rpartition("/")
        path = f"{directory}{sep}{sha256}.{basename}" if self.consistent_snapshot else name
        return self.targets_url.rstrip("/") + "/" + quote(path)


@dataclass(frozen=True)
class Limits:
    """The size limits planning enforces (from :class:`~ota.edge.config.AgentConfig`)."""

    max_download_bytes: int
    max_selftest_bytes: int


def check_target_name(name: str) -> None:
    """Refuse names that could escape a directory if anything ever used them as a path.

    Raises:
        VerificationError: ``..``, empty or absolute parts, backslashes or control characters.
    """
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(part in {"", ".", ".."} for part in parts)
        or any(ord(ch) < 32 for ch in name)
    ):
        raise VerificationError(f"refusing target name {name!r} (path traversal)")


def usable_delta(assignment: Assignment, current_sha256: str | None) -> DeltaRef | None:
    """The assignment's delta when it applies to the installed model, else None."""
    delta = assignment.delta
    return delta if delta is not None and delta.base_sha256 == current_sha256 else None


def targets_to_look_up(assignment: Assignment, current_sha256: str | None) -> list[str]:
    """The TUF targets the agent must look up before :func:`plan_update`: the model, and the delta if usable.

    The self-test target's name is in the model target's custom fields: see :func:`selftest_name`.

    Raises:
        VerificationError: The assignment has no target, or a name looks like a path traversal.
    """
    if assignment.target is None:
        raise VerificationError("the assignment names no target to plan")
    names = [assignment.target.name]
    delta = usable_delta(assignment, current_sha256)
    if delta is not None:
        names.append(delta.name)
    for name in names:
        check_target_name(name)
    return names


def model_custom(info: SignedTarget, name: str) -> ModelTargetCustom:
    """Parse the signed custom fields of the model target ``name``.

    Raises:
        TargetMetadataError: They are not a model target's custom document.
    """
    return _parse(ModelTargetCustom.from_dict, info, name)


def selftest_name(info: SignedTarget, name: str) -> str | None:
    """The name of the self-test target the model target ``name`` points at, if any (checked as a path).

    Raises:
        TargetMetadataError: The model target's custom fields are malformed.
        VerificationError: The self-test name looks like a path traversal.
    """
    vectors = model_custom(info, name).selftest
    if vectors is not None:
        check_target_name(vectors)
    return vectors


def plan_update(
    assignment: Assignment,
    *,
    current_sha256: str | None,
    targets: Mapping[str, SignedTarget],
    repository: Repository,
    limits: Limits,
) -> UpdatePlan:
    """Decide what to install for a verified ``assignment``, from the TUF targets the agent looked up.

    Args:
        assignment: The director's assignment, already verified (:func:`ota.core.manifest.verify_assignment`).
        current_sha256: The installed model's sha256 (None before the first install).
        targets: TUF target info by name: every name of :func:`targets_to_look_up`, and the self-test
            target's when the model's custom fields name one.
        repository: Where targets are downloaded from.
        limits: Size limits.

    Returns:
        The plan to persist and hand to the installer.

    Raises:
        TargetMetadataError: A signed custom field is malformed, or a delta's differs from the director's.
        VerificationError: Any other check above fails.
    """
    targets_to_look_up(assignment, current_sha256)  # refuses a missing target and path-traversal names
    target = assignment.target
    assert target is not None  # targets_to_look_up refused an assignment without one
    info = _get(targets, target.name)
    _agree(info, target)
    if target.length > limits.max_download_bytes:
        raise VerificationError(f"{target.name} is {target.length} bytes, over max_download_bytes")
    custom = model_custom(info, target.name)
    delta_ref: ArtifactRef | None = None
    delta = usable_delta(assignment, current_sha256)
    if delta is not None:
        delta_info = _get(targets, delta.name)
        _agree(delta_info, delta)
        signed = _parse(DeltaTargetCustom.from_dict, delta_info, delta.name)
        if (signed.base_sha256, signed.result_sha256) != (delta.base_sha256, delta.result_sha256):
            raise TargetMetadataError(
                f"delta {delta.name}: its signed base/result sha256 differ between TUF and the director"
            )
        delta_ref = ArtifactRef(
            name=delta.name,
            url=repository.url(delta.name, delta.sha256),
            length=delta.length,
            sha256=delta.sha256,
        )
    selftest: ArtifactRef | None = None
    if custom.selftest is not None:
        check_target_name(custom.selftest)
        vectors = _get(targets, custom.selftest)
        _parse(SelfTestTargetCustom.from_dict, vectors, custom.selftest)
        sha = vectors.hashes.get("sha256")
        if sha is None or vectors.length > limits.max_selftest_bytes:
            raise VerificationError(f"self-test target {custom.selftest} lacks a sha256 or is too large")
        selftest = ArtifactRef(
            name=custom.selftest, url=repository.url(custom.selftest, sha), length=vectors.length, sha256=sha
        )
    return UpdatePlan(
        target=ArtifactRef(
            name=target.name,
            url=repository.url(target.name, target.sha256),
            length=target.length,
            sha256=target.sha256,
        ),
        version=custom.version,
        delta=delta_ref,
        delta_base_sha256=delta.base_sha256 if delta is not None else None,
        selftest=selftest,
        assignment_counter=assignment.counter,
        release_id=assignment.release_id,
        rollout_id=assignment.rollout_id,
    )


def _get(targets: Mapping[str, SignedTarget], name: str) -> SignedTarget:
    info = targets.get(name)
    if info is None:
        raise VerificationError(f"the image repository has no target {name!r}")
    return info


def _agree(info: SignedTarget, ref: TargetRef | DeltaRef) -> None:
    """Refuse unless TUF and the director agree on length and sha256."""
    if info.length != ref.length or info.hashes.get("sha256") != ref.sha256:
        raise VerificationError(
            f"director and image repository disagree on {ref.name}: director {ref.length} B "
            f"{ref.sha256[:12]}…, TUF {info.length} B {str(info.hashes.get('sha256'))[:12]}…"
        )


def _parse(from_dict: Callable[[Any], Doc], info: SignedTarget, name: str) -> Doc:
    try:
        document = from_dict(info.custom)
    except DocumentFormatError as exc:
        raise TargetMetadataError(f"target {name}: signed custom fields refused: {exc}") from exc
    return document
