"""The campaign file: one TOML document read by the server (``diehard serve``) and by the analysis.

The server reads ``[server]``, ``[escalation]``, ``[notify]``, ``[[switch]]`` and the control part of each
``[[dut]]``; its live dashboard reads ``[dashboard]``; the analysis reads ``[facility]``, ``[analysis]`` and
each DUT's position, clock and the hostname its logs carry. Keeping both in one file means the numbers in a
paper come from the same file that ran the campaign. See ``setups/campaigns/`` for complete examples.

No credentials in this file: switch passwords come from environment variables (``password_env``) or a
secrets file with mode 0600 (``secret = "name"``); SSH uses keys or the agent.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from diehardlab.config import Strict, load
from diehardlab.errors import ConfigError
from diehardlab.formats.filename import HOSTNAME, PLAIN_NAME, name_problem
from diehardlab.timezones import get_zone

NAME = rf"^{PLAIN_NAME}$"  # names that become folders and file names: no ".", "..", separators, leading "-"
# A network address as ssh, ping and HTTP take it: a name, an IPv4 or an IPv6 address (with its zone); never
# an option ("-o...") or a path.
_HOST = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9._:%\[\]-]*$")


def _zone_name(v: str) -> str:
    try:
        get_zone(v, "timezone")
    except ConfigError as exc:  # pydantic reports ValueErrors with the field's location
        raise ValueError(str(exc).removeprefix("timezone: ")) from None
    return v


class Campaign(Strict):
    name: str = Field(pattern=NAME)
    description: str = ""


class Server(Strict):
    bind: str = "0.0.0.0"
    udp_port: int = Field(1024, ge=1, le=65535)
    log_dir: Path = Path("logs")  # server copies, pulled DUT logs, console logs (relative: to the campaign file)
    journal: Path = Path("journal.jsonl")
    secrets_file: Path | None = None  # TOML, mode 0600: switch passwords and datagram keys, by name
    datagram_window_s: float = Field(30.0, gt=0)  # freshness window of extended datagrams
    status_interval_s: float = Field(10.0, gt=0)
    # The address DUTs send their datagrams to ({server_host} in benchmark argv); default: bind, or
    # 127.0.0.1 when bind is the wildcard.
    public_host: str = ""
    poll_s: float = Field(1.0, gt=0)  # how often each supervisor checks its benchmark and its liveness


class Escalation(Strict):
    """What the software and hardware watchdogs do when a DUT stops answering, in this order."""

    max_app_restarts: int = Field(3, ge=0)  # restart the benchmark (over SSH) this many times...
    max_os_reboots: int = Field(2, ge=0)  # ...then soft-reboot the OS this many times...
    power_off_s: float = Field(10.0, ge=0)  # ...then power-cycle, holding power off this long
    max_power_cycles: int = Field(3, ge=1)  # consecutive power cycles before a cool-down
    cool_down_s: float = Field(300.0, ge=0)  # power off for this long, then try again once
    max_cool_downs: int = Field(1, ge=0)  # after this many cool-downs without progress: broken


class Notify(Strict):
    webhook_url: str
    timeout_s: float = Field(5.0, gt=0)
    events: list[Literal["power-cycle", "cool-down", "broken", "resumed"]] = ["power-cycle", "cool-down", "broken"]


SwitchModel = Literal["lindy-ipower", "ip9258", "dli-legacy", "dli-rest", "netio", "snmp", "command", "simulated"]


class Switch(Strict):
    name: str = Field(pattern=NAME)
    model: SwitchModel
    host: str = ""
    port: int | None = Field(None, ge=1, le=65535)
    user: str = ""
    password_env: str | None = None  # name of the environment variable holding the password
    secret: str | None = None  # name of the entry in the secrets file holding the password
    timeout_s: float = Field(5.0, gt=0)
    settle_s: float = Field(2.0, ge=0)  # how long a switch may take to report its new state
    outlets: int = Field(8, ge=1, le=64)
    # SNMP PDUs: the outlet-control OID prefix (the outlet number is appended) and the values it takes.
    snmp_oid: str | None = None
    snmp_on: int = 1
    snmp_off: int = 2
    community_env: str | None = None
    # External command: argv lists; "{outlet}" is replaced by the outlet number. state prints on/off.
    on_command: list[str] | None = None
    off_command: list[str] | None = None
    state_command: list[str] | None = None
    # Simulated switch: where the outlet states are kept, so 'diehard power' and the server agree
    # (default: simulated-switch-<name>.json beside the journal).
    state_file: Path | None = None

    @model_validator(mode="after")
    def _needs_host(self) -> Switch:
        if self.model not in ("command", "simulated") and not self.host:
            raise ValueError(f"a '{self.model}' switch needs 'host'")
        if self.host:
            _check_switch_host(self.host)
        if self.model == "command" and not (self.on_command and self.off_command):
            raise ValueError("a 'command' switch needs 'on_command' and 'off_command' (argv lists)")
        return self


def _check_switch_host(host: str) -> None:
    """``host`` is an address, or an http(s) URL of the switch without credentials.

    A model validator (not a field validator) raises these, so the error shows the switch, never the value:
    a password pasted into the URL must not be printed into a terminal, a CI log or an issue."""
    netloc = urlsplit(host).netloc if "://" in host else host
    if "@" in netloc:
        raise ValueError(
            "host holds credentials (user:password@ in the address); take them out of the file (and change that "
            "password: it was written in it) and give 'user' and 'password_env' or 'secret' instead"
        )
    scheme = host.split("://", 1)[0] if "://" in host else ""
    if scheme not in ("", "http", "https") or not _HOST.match(netloc) or ("://" in host and not netloc):
        raise ValueError("host must be a host name or IP address, or an http(s)://address[:port] URL")


class Ssh(Strict):
    user: str
    port: int = Field(22, ge=1, le=65535)
    key: Path | None = None  # private key file; None: the SSH agent
    known_hosts: Literal["strict", "tofu"] = "strict"  # tofu = trust on first use, then pin
    known_hosts_file: Path | None = None  # default ~/.ssh/known_hosts
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(30.0, gt=0)
    keepalive_s: float = Field(15.0, gt=0)


class Benchmark(Strict):
    name: str = Field(pattern=NAME)  # the benchmark field of the log file name
    argv: list[str] = Field(min_length=1)  # run on the DUT, detached, with a PID file
    header: str = ""  # #SERVER_HEADER text (default: the argv)
    window_s: float = Field(3600.0, gt=0)  # rotation: run this long, then the next benchmark in file order
    model: str = ""  # model configuration, for grouping in the analysis (default: the name)
    # Silence allowed between the start and the first datagram (loading the model, CUDA start-up); after it,
    # the DUT's liveness_timeout_s applies. Default: the DUT's liveness timeout.
    start_timeout_s: float | None = Field(None, gt=0)


class Dut(Strict):
    name: str = Field(pattern=NAME)
    host: str = "127.0.0.1"
    hostname: str = ""  # the host field of its log names (default: name)
    transport: Literal["ssh", "local"] = "ssh"
    ssh: Ssh | None = None
    switch: str | None = None
    outlet: int | None = Field(None, ge=1)
    console: str | None = None  # pyserial URL: /dev/ttyUSB0, rfc2217://host:port, socket://host:port
    console_baud: int = 115200
    boot_timeout_s: float = Field(180.0, gt=0)
    liveness_timeout_s: float = Field(30.0, gt=0)
    ecc: Literal["on", "off", "auto"] = "auto"
    datagram: Literal["legacy", "extended"] = "legacy"
    datagram_key: str | None = None  # name of the entry in the secrets file (extended form)
    source_ip: str | None = None  # legacy datagrams carry no DUT id: match them by source address
    escalation: Escalation | None = None  # per-DUT override of the campaign's [escalation]
    probe: Literal["tcp", "ping", "none"] = "tcp"  # host liveness: TCP connect to the SSH port, or ICMP ping
    stop_grace_s: float = Field(5.0, ge=0)  # SIGTERM, then this long, then SIGKILL of the process group
    # Local transport: where the DUT's own logs and run files live (default <log_dir>/../local-duts/<name>),
    # and how long a simulated OS reboot or power-on takes before the "host" answers again.
    local_dir: Path | None = None
    local_boot_s: float = Field(1.0, ge=0)
    reboot_command: list[str] = ["sudo", "/sbin/reboot"]
    remote_log_dir: str = "/var/radiation-benchmarks/log"  # where the DUT writes its own log copy
    remote_run_dir: str = "/tmp/diehardlab"  # PID files and stdout/stderr of benchmarks
    benchmarks: list[Benchmark] = Field(min_length=1, alias="benchmark")
    # Analysis: where the board sat and what its clock was.
    distance_m: float | None = Field(None, ge=0)  # beyond the facility's reference distance (LANSCE)
    attenuation: float | None = Field(None, gt=0, le=1)  # flux factor of this position (ChipIR)
    timezone: str = "UTC"  # the DUT's clock, for logs that do not state theirs

    model_config = Strict.model_config | {"populate_by_name": True}

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return _zone_name(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOST.match(v):
            raise ValueError("use a host name or an IP address (it is given to ssh and ping)")
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        problem = name_problem(v, HOSTNAME) if v else None
        if problem:
            raise ValueError(f"the host field of the DUT's log names: {problem}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Dut:
        if self.transport == "ssh" and self.ssh is None:
            raise ValueError("an SSH DUT needs an [dut.ssh] table (user, key or agent)")
        if (self.switch is None) != (self.outlet is None):
            raise ValueError("'switch' and 'outlet' go together")
        if self.datagram == "extended" and self.datagram_key is None:
            raise ValueError("the extended datagram form needs 'datagram_key' (a name in the secrets file)")
        if self.datagram_key == "generate" and self.transport != "local":
            raise ValueError("datagram_key = 'generate' (a fresh key per server start) is for the local transport only")
        if not self.hostname:
            problem = name_problem(self.name, HOSTNAME)
            if problem:
                raise ValueError(
                    f"give 'hostname' (the DUT's name {self.name!r} cannot be a log name's host: {problem})"
                )
            self.hostname = self.name
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"benchmark names must be unique within a DUT (they name its logs): {', '.join(dup)}")
        return self


class FluxFactor(Strict):
    since: datetime  # facility clock
    value: float = Field(gt=0, allow_inf_nan=False)


class BeamWindow(Strict):
    start: datetime  # facility clock
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> BeamWindow:
        if self.end <= self.start:
            raise ValueError(f"a beam window must end after it starts (start {self.start}, end {self.end})")
        return self


class Facility(Strict):
    kind: Literal["chipir", "lansce", "simulated"]
    # Counts-to-flux factor, n/cm^2/s per (count/s), from the facility's calibration (not public). One
    # value, or a list by date when it changed during the campaign (LANSCE).
    flux_factor: float | None = Field(None, gt=0, allow_inf_nan=False)
    flux_factors: list[FluxFactor] = []
    timezone: str = "UTC"  # the facility log's clock
    reference_distance_m: float = Field(20.0, gt=0, allow_inf_nan=False)  # LANSCE: inverse-square from here
    flux_logs: list[Path] = []  # relative paths: to the campaign file
    beam_windows: list[BeamWindow] = []  # when set, only these periods count as beam time
    # The flux files of a facility are one timeline: gaps (between daily files, rows missing, a counter reset) up
    # to this long are bridged; longer ones are beam of unknown state, and runs inside them are excluded.
    flux_gap_s: float = Field(300.0, ge=0, allow_inf_nan=False)
    # The most flux the facility can deliver at a board: a counter interval above it is a glitch, not beam.
    max_flux_n_cm2_s: float | None = Field(None, gt=0, allow_inf_nan=False)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return _zone_name(v)

    @model_validator(mode="after")
    def _factor(self) -> Facility:
        if self.flux_factor is None and not self.flux_factors:
            raise ValueError("give 'flux_factor' (or a dated list in 'flux_factors') from the facility's calibration")
        return self


class EccRule(Strict):
    """The ECC mode of logs that do not state it (names before 2017 have no ECC field): by board, by folder,
    by time range on the facility clock; the first rule that matches a log applies."""

    value: Literal["ON", "OFF", "on", "off"]
    board: str | None = None  # a [[dut]] name or the host field of the log names
    folder: str | None = None  # logs under a folder whose path ends with this (e.g. "Kepler/ECCON")
    since: datetime | None = None  # facility clock, inclusive
    until: datetime | None = None  # exclusive

    @model_validator(mode="after")
    def _something(self) -> EccRule:
        if self.board is None and self.folder is None and self.since is None and self.until is None:
            raise ValueError("an ecc rule needs at least one of board, folder, since, until")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError(f"until ({self.until}) must be after since ({self.since})")
        return self


class Analysis(Strict):
    # "config": the #HEADER fields that differ between runs of one board and benchmark (two input sets or ABFT
    # modes are two groups); "header.<key>": one #HEADER field.
    group_by: list[str] = ["board", "benchmark", "ecc", "config"]
    header_ignore: list[str] = []  # #HEADER keys that do not make a configuration (e.g. a per-run seed)
    confidence: float = Field(0.95, gt=0, lt=1)
    one_sided: bool = False
    fluence: Literal["integrated", "mean-flux-x-acc-time"] = "integrated"
    reference_group: str | None = None  # normalise to this group, as papers publish
    sea_level_flux: float = Field(13.0, gt=0, allow_inf_nan=False)  # n/(cm^2 h), JEDEC JESD89A
    server_timezone: str = "UTC"  # the clock of server copies (#SERVER_BEGIN, #SERVER_END, ISO prefixes)
    beam_off_fraction: float = Field(0.1, ge=0, lt=1)  # counter rate below this x the median = beam off
    # The end of logs without a wall-clock end: start + kernel time, or the file's modification time when
    # plausible ("mtime": results then depend on how the files were copied).
    wall_end: Literal["kernel", "mtime"] = "kernel"
    ecc: list[EccRule] = []
    # Fig. 7 of the DieHardNet paper: every class of every group normalised to the critical-SDC rate of the
    # group matching fig7_reference, per panel of groups sharing the fig7_per keys (per board by default).
    fig7_per: list[str] = ["board"]
    fig7_reference: str = "model=diehardnet"

    @field_validator("server_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return _zone_name(v)


class Dashboard(Strict):
    """The live web page (``diehard dashboard``, ``diehard serve --dashboard``): read-only, localhost by default."""

    # Beam time is wanted until each configuration's interval (Garwood, at [analysis] confidence) lies within
    # +-this fraction of its cross section, e.g. 0.2 = +-20 %.
    target_relative_width: float = Field(0.2, gt=0, lt=1)
    # Binding anywhere but loopback needs a token: the name of its entry in the secrets file ([server]
    # secrets_file), never the token itself.
    token_secret: str | None = None
    refresh_s: float = Field(15.0, ge=1)  # how often the cross sections are recomputed from the growing files
    max_clients: int = Field(32, ge=1, le=1000)  # open pages at once; more are refused (503), never queued
    # A facility log named in [facility] flux_logs and has not grown for this long is flagged on the page.
    facility_stall_s: float = Field(120.0, gt=0)


class CampaignFile(Strict):
    campaign: Campaign
    server: Server = Server()
    escalation: Escalation = Escalation()
    notify: Notify | None = None
    switches: list[Switch] = Field([], alias="switch")
    duts: list[Dut] = Field(min_length=1, alias="dut")
    facility: Facility | None = None
    analysis: Analysis = Analysis()
    dashboard: Dashboard = Dashboard()

    model_config = Strict.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _references(self) -> CampaignFile:
        for what, names in (
            ("DUT names", [d.name for d in self.duts]),
            ("DUT log hostnames (the host field of their log names)", [d.hostname for d in self.duts]),
            ("switch names", [s.name for s in self.switches]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} must be unique: {', '.join(dup)}")
        switches = {s.name: s for s in self.switches}
        outlets: dict[tuple[str, int], str] = {}
        for d in self.duts:
            if d.switch is not None:
                if d.switch not in switches:
                    raise ValueError(f"DUT {d.name!r} uses switch {d.switch!r}, which no [[switch]] table defines")
                if d.outlet is not None and d.outlet > switches[d.switch].outlets:
                    raise ValueError(f"DUT {d.name!r}: outlet {d.outlet} > switch {d.switch!r} outlets")
                other = outlets.setdefault((d.switch, d.outlet or 0), d.name)
                if other != d.name:  # a power cycle of one would cut the other
                    raise ValueError(f"DUTs {other!r} and {d.name!r} are both on switch {d.switch!r} outlet {d.outlet}")
        return self

    def dut(self, name: str) -> Dut:
        for d in self.duts:
            if d.name == name:
                return d
        raise ConfigError(f"no DUT named {name!r} in the campaign (have: {', '.join(d.name for d in self.duts)})")

    def switch(self, name: str) -> Switch:
        for s in self.switches:
            if s.name == name:
                return s
        raise ConfigError(f"no switch named {name!r} in the campaign")


def load_campaign(path: str | Path) -> CampaignFile:
    """Read and validate a campaign file; relative paths in it are resolved against its folder."""
    path = Path(path)
    c = load(CampaignFile, path)
    base = path.resolve().parent

    def rel(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    c.server.log_dir = rel(c.server.log_dir)
    c.server.journal = rel(c.server.journal)
    if c.server.secrets_file is not None:
        c.server.secrets_file = rel(c.server.secrets_file)
    for sw in c.switches:
        if sw.state_file is not None:
            sw.state_file = rel(sw.state_file)
    for d in c.duts:
        if d.local_dir is not None:
            d.local_dir = rel(d.local_dir)
        if d.ssh is not None:
            if d.ssh.key is not None:
                d.ssh.key = rel(d.ssh.key)
            if d.ssh.known_hosts_file is not None:
                d.ssh.known_hosts_file = rel(d.ssh.known_hosts_file)
    if c.facility is not None:
        c.facility.flux_logs = [rel(p) for p in c.facility.flux_logs]
    return c
