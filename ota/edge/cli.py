"""Command-line entry points of the edge agent: ``edgefleet agent …``, ``edgefleet fleet …`` and
the ``edgefleet-agent`` console script.

The root CLI (``ota/cli.py``) mounts ``agent_app`` and ``fleet_app`` lazily, so running the agent never
imports server or training code. ``edgefleet-agent`` is ``edgefleet agent run`` as its own program, for
images that ship only the agent.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ota.core.errors import OtaError
from ota.core.nudge import DEFAULT_TOPIC_PREFIX
from ota.edge.config import AgentConfig
from ota.edge.errors import EdgeError
from ota.edge.nudge import DEFAULT_SPREAD_S

agent_app = typer.Typer(help="Run the edge agent on this device.", no_args_is_help=True, add_completion=False)
fleet_app = typer.Typer(
    help="Simulate a fleet of agents against a server.", no_args_is_help=True, add_completion=False
)

ServerOption = Annotated[str, typer.Option("--server", help="Base URL of the OTA server.")]
StateDirOption = Annotated[
    Path, typer.Option("--state-dir", help="Where the agent keeps its key, slots and state.")
]


def run(
    server: ServerOption,
    state_dir: StateDirOption,
    provisioning_token: Annotated[
        str | None, typer.Option("--provisioning-token", help="Token for the first enrolment.")
    ] = None,
    profile: Annotated[str, typer.Option("--profile", help="Hardware profile label, or 'auto'.")] = "auto",
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="Device id (default: from the key).")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Label rollouts can select on (repeat).")
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Device group.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit.")] = False,
    allow_full_fallback: Annotated[
        bool,
        typer.Option("--full-fallback/--no-full-fallback", help="After a failed delta, download in full."),
    ] = True,
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt",
            envvar="EDGEFLEET_MQTT_URL",
            help="MQTT broker for push nudges, mqtt[s]://[user[:password]@]host[:port]: poll as soon as "
            "the server nudges (still verifying everything). Without it: polling only.",
        ),
    ] = None,
    mqtt_username: Annotated[
        str | None, typer.Option("--mqtt-username", envvar="EDGEFLEET_MQTT_USERNAME", help="Broker user.")
    ] = None,
    mqtt_password: Annotated[
        str | None,
        typer.Option("--mqtt-password", envvar="EDGEFLEET_MQTT_PASSWORD", help="Broker password."),
    ] = None,
    mqtt_ca_file: Annotated[
        Path | None, typer.Option("--mqtt-ca-file", help="CA bundle for mqtts:// (default: the system's).")
    ] = None,
    mqtt_topic_prefix: Annotated[
        str,
        typer.Option("--mqtt-topic-prefix", help="Topic prefix (the server's EDGEFLEET_MQTT_TOPIC_PREFIX)."),
    ] = DEFAULT_TOPIC_PREFIX,
    nudge_spread: Annotated[
        float,
        typer.Option("--nudge-spread", min=0.0, help="Poll a random 0 to this many seconds after a nudge."),
    ] = DEFAULT_SPREAD_S,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the agent: enrol on first start, then poll, verify, install and report.

    Raises:
        typer.Exit: With code 1 when the agent cannot start, or when ``--once`` ended in a failure.
    """
    from ota.edge.agent import Agent, PollOutcome
    from ota.edge.nudge import NudgeListener

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        agent = Agent(
            server_url=server,
            state_dir=state_dir,
            config=AgentConfig(allow_full_fallback=allow_full_fallback),
            provisioning_token=provisioning_token,
            profile=profile,
            device_id=device_id,
            tags=tuple(tag or ()),
            group=group,
        )
    except (EdgeError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    listener = None
    if mqtt and not once:
        try:
            listener = NudgeListener(
                url=mqtt,
                device_id=agent.device_id,
                profile=agent.hardware.name,
                prefix=mqtt_topic_prefix,
                username=mqtt_username,
                password=mqtt_password,
                ca_file=str(mqtt_ca_file) if mqtt_ca_file else None,
                spread_s=nudge_spread,
            )
        except OtaError as exc:
            typer.echo(f"error: --mqtt: {exc}", err=True)
            raise typer.Exit(1) from exc
        listener.start()
    if not once:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        result = agent.run(once=once, stop=stop, wake=listener.wake if listener else None)
    finally:
        if listener is not None:
            listener.stop()
    typer.echo(json.dumps({"outcome": result.outcome, "detail": result.detail, "attack": result.attack}))
    if once and result.outcome in {PollOutcome.FAILED, PollOutcome.ERROR, PollOutcome.REJECTED}:
        raise typer.Exit(1)


def status(state_dir: StateDirOption) -> None:
    """Print the device's id, profile, committed model and update phase as JSON.

    Raises:
        typer.Exit: With code 1 when the state cannot be read.
    """
    from ota.edge.agent import Agent, describe

    try:
        agent = Agent(server_url="http://unused.invalid", state_dir=state_dir)
        typer.echo(json.dumps(describe(agent), indent=2))
    except (EdgeError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def profile() -> None:
    """Print the detected hardware profile as JSON."""
    from ota.edge.profile import detect_profile

    detected = detect_profile()
    typer.echo(json.dumps({"name": detected.name, **detected.to_details()}, indent=2))


agent_app.command("run")(run)
agent_app.command("status")(status)
agent_app.command("profile")(profile)


@fleet_app.command("simulate")
def simulate(
    server: Annotated[
        str, typer.Option("--server", envvar="EDGEFLEET_SERVER", help="Base URL of the OTA server.")
    ],
    devices: Annotated[int, typer.Option("--devices", min=1, help="How many agents to run.")] = 10,
    provisioning_token: Annotated[
        str,
        typer.Option(
            "--provisioning-token",
            envvar="EDGEFLEET_PROVISIONING_TOKEN",
            help="Provisioning token the devices enrol with. Without one, an admin operator token "
            "(EDGEFLEET_OPERATOR_TOKEN) creates an auto-accepting one.",
            show_default=False,
        ),
    ] = "",
    operator_token: Annotated[
        str,
        typer.Option(
            "--operator-token",
            envvar="EDGEFLEET_OPERATOR_TOKEN",
            help="Operator token: reads releases and rollouts (profile, convergence); with the admin "
            "scope it creates the provisioning token.",
            show_default=False,
        ),
    ] = "",
    fail_rate: Annotated[
        float, typer.Option("--fail-rate", min=0.0, max=1.0, help="Health-check failures.")
    ] = 0.0,
    flaky_network: Annotated[
        float, typer.Option("--flaky-network", min=0.0, max=1.0, help="Dropped-connection rate.")
    ] = 0.0,
    crash_rate: Annotated[
        float, typer.Option("--crash-rate", min=0.0, max=1.0, help="Crash mid-install.")
    ] = 0.0,
    processes: Annotated[int, typer.Option("--processes", min=1, help="Worker processes.")] = 2,
    duration: Annotated[
        float, typer.Option("--duration", help="Stop after this many seconds if not converged.")
    ] = 300.0,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="Seconds between polls.")] = 2.0,
    work_dir: Annotated[
        Path, typer.Option("--work-dir", help="Device state dirs go here, one folder per server.")
    ] = Path(".edgefleet/fleet"),
    profile_name: Annotated[
        str,
        typer.Option("--profile", help="Hardware profile of every device; 'auto': the releases' profile."),
    ] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Run N real agents against a server until the fleet converges; inject failures; summarise.

    The fleet has converged when every device runs what its assignment names (or gave up on it after a
    failure) and no rollout of its profile is still running.

    Raises:
        typer.Exit: With code 1 when the simulation cannot start (the message names the cause), when
            the fleet did not converge before ``--duration``, or when it converged with no device running
            a release.
    """
    from ota.edge.fleet import (
        FleetOptions,
        FleetSetupError,
        fleet_converged,
        prepare_fleet,
        simulate_fleet,
        throttled,
    )

    options = FleetOptions(
        server=server,
        devices=devices,
        provisioning_token=provisioning_token,
        fail_rate=fail_rate,
        flaky_network=flaky_network,
        crash_rate=crash_rate,
        processes=processes,
        duration_s=duration,
        poll_interval_s=poll_interval,
        work_dir=work_dir,
        profile=profile_name,
        seed=seed,
    )
    try:
        options, api = prepare_fleet(options, operator_token=operator_token or None)
    except EdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    rollout_running = None
    if api is not None:
        profile = options.profile

        def running() -> bool:
            try:
                return api.profile_rollout_running(profile)
            except FleetSetupError as exc:
                logging.getLogger(__name__).warning("cannot read rollouts: %s", exc)
                return True  # unknown: do not call the fleet converged on a guess

        rollout_running = throttled(running, every_s=1.0)
    else:
        typer.echo(
            "note: no operator token, so rollouts are not visible; the fleet counts as converged when "
            "every device runs its current assignment",
            err=True,
        )
    typer.echo(f"fleet: {devices} devices, profile {options.profile}, state in {options.work_dir}", err=True)
    try:
        summary = simulate_fleet(
            options,
            converged=lambda s: fleet_converged(s, devices=devices, rollout_running=rollout_running),
        )
    except EdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not summary.converged:
        causes = "; ".join(f"{n}× {cause}" for cause, n in summary.causes.most_common(3)) or "no errors"
        typer.echo(
            f"error: the fleet did not converge in {duration:.0f} s: {summary.settled()} of {devices} "
            f"devices run their assignment ({causes})",
            err=True,
        )
        raise typer.Exit(1)
    if summary.running_a_release() == 0:
        typer.echo(
            "error: the fleet converged with nothing installed: no rollout assigns a "
            f"{options.profile} release to these devices, or it was aborted (see edgefleet rollout status)",
            err=True,
        )
        raise typer.Exit(1)


_agent_only = typer.Typer(add_completion=False)
_agent_only.command()(run)


def agent_main() -> None:
    """Console-script entry point ``edgefleet-agent`` (the ``agent run`` command as its own program)."""
    _agent_only()
