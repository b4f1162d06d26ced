"""A real audio device for tests: a PulseAudio null sink, a monitor recorder, and analysis helpers.

Machines without a sound card (CI, containers) have no PortAudio output device,
so the playback path could otherwise only be tested against fakes.  This rig
starts a private, per-test-session PulseAudio daemon with a *null sink*: a
virtual sound card that consumes audio in real time, paced by the clock like
real hardware, and whose *monitor* source lets us record exactly what was
played.  PortAudio reaches it through the ALSA ``pulse`` plugin, as the devices
``pulse`` and ``default`` (host API ``ALSA``).

Needs the Debian packages installed by ``scripts/install-audio-deps``
(pulseaudio, pulseaudio-utils, libportaudio2, libasound2-plugins).

Usage from another test module::

    from tests.audio_rig import MonitorRecorder, find_gaps, pulse_sink  # noqa: F401

    @pytest.mark.device
    def test_something(pulse_sink):  # noqa: F811
        with MonitorRecorder(rate=22050) as rec:
            ...play through sounddevice...
            recorded = rec.stop()

Things learnt the hard way (see the module-level constants too):

* PortAudio enumerates devices once, in ``Pa_Initialize`` (``import
  sounddevice``).  The environment must point at the daemon *before* that, or
  the process sees no devices; :func:`reinitialize_portaudio` re-enumerates.
* ``norewinds=1`` on the null sink: without it a monitor recorder receives data
  only 1-2 s after it starts.
* The ALSA pulse plugin drops about the last 40 ms when a stream is closed, so
  end playback with >= 100 ms of silence (:data:`TAIL_PAD_S`).
* Start the recorder first and wait for its first bytes before playing
  (:meth:`MonitorRecorder.start` does the waiting).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes.util
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pytest

from shm import pid_running

__all__ = [
    "DEFAULT_SILENCE_THRESHOLD",
    "TAIL_PAD_S",
    "MonitorRecorder",
    "PlaybackReport",
    "PulseNullSink",
    "align",
    "find_gaps",
    "pid_alive",
    "play_through_callback",
    "pulse_sink",
    "reinitialize_portaudio",
    "require_audio_stack",
    "speech_span",
    "to_int16",
    "tone",
]

INSTALL_HINT = "run scripts/install-audio-deps (Debian: pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins)"

#: Silence in the rig is digital zero, but two resampling stages (stream rate -> 48 kHz sink ->
#: recorder rate) leave a little ringing next to hard edges; 100/32768 (-50 dBFS) sits above that
#: and far below any speech or test tone.
DEFAULT_SILENCE_THRESHOLD = 100

#: Silence to append after the last real sample: closing a stream drops ~40 ms in the pulse plugin.
TAIL_PAD_S = 0.15

_ENV_KEYS = ("XDG_RUNTIME_DIR", "PULSE_SERVER", "PULSE_COOKIE")

#: Device settings for the tests that check what playback *contains* (every frame, in place, no
#: gap): 512-frame callbacks and PortAudio's "high" latency. The product default (128 frames,
#: "low": a cancel reaches the speaker within ~6 ms) is what the cancel tests use. On the 2-core
#: test VM, 128-frame callbacks through PulseAudio's ALSA plugin underflowed in 3 of 4 runs of
#: the same test from scheduling alone, before and after the "Rooms" change alike, which would
#: make these tests measure the VM's scheduler instead of skald's pipeline.
STEADY_DEVICE = {"SKALD_AUDIO_LATENCY": "high", "SKALD_AUDIO_BLOCKSIZE": "512"}


# --------------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------------


#: Above PulseAudio's own null-sink thread (RR 5), below skald's audio callback (FIFO 40).
RIG_RT_PRIORITY = 20


def _as_hardware(pid: int | None) -> None:
    """The null sink and its recorder stand in for a sound card, whose DMA no CPU load can
    starve: run them at high priority (nice -15) where allowed, so a loaded test machine
    measures skald's timing, not the rig's. Unprivileged: left as is."""
    if pid is None:
        return
    # Every thread, not only the main one (Linux priorities are per thread): PulseAudio's main
    # thread receives the client's blocks, its null-sink thread consumes them, parec's reads.
    # SCHED_RR where permitted (root, as in CI), else nice -15, else as is.
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for tid in threads:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, -15)
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:
                os.sched_setscheduler(tid, os.SCHED_RR, os.sched_param(RIG_RT_PRIORITY))


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie. The daemon is re-parented to init when it
    daemonizes, so its exit leaves a zombie until init reaps it; that counts as gone."""
    return pid_running(pid)


def _is_pulseaudio(pid: int) -> bool:
    """Guard against PID reuse: only ever signal a process that is still a pulseaudio."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("pulseaudio")
    except OSError:
        return False


class PulseNullSink:
    """A private PulseAudio daemon with one null sink, for the duration of a test session.

    The daemon runs per-user (no ``--system``, no D-Bus, works as root) with its own
    fresh ``XDG_RUNTIME_DIR`` (a 0700 temp dir), so it never touches a desktop
    user's sound server and several can run side by side.  Clients find it through
    :attr:`env`.  Its config/cookie live in the same temp dir (``HOME`` and
    ``XDG_CONFIG_HOME`` are redirected for the daemon, ``PULSE_COOKIE`` for
    clients), so nothing is written to the real home directory.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    BINARIES = ("pulseaudio", "pactl", "parec")

    def __init__(
        self, sink_name: str = "vsink", rate: int = 48000, start_timeout_s: float = 10.0, log_underruns: bool = False
    ) -> None:
        self.sink_name = sink_name
        self.rate = rate
        self.start_timeout_s = start_timeout_s
        #: Log at debug level with times: the daemon's log is the only place that tells when a
        #: client's stream ran dry (``stream_underruns``), i.e. when this machine did not run a
        #: player (a browser, skald's device) in time to fill its buffer.
        self.log_underruns = log_underruns
        self._dir: Path | None = None
        self._pid: int | None = None
        self._log_anchor: tuple[float, float] | None = None  # (wall s, daemon log s) of one moment

    # -- discovery ---------------------------------------------------------------------------------

    @classmethod
    def missing_binaries(cls) -> list[str]:
        """The required executables not found on ``PATH``."""
        return [b for b in cls.BINARIES if shutil.which(b) is None]

    @classmethod
    def available(cls) -> bool:
        """Whether pulseaudio (and pactl, parec) are installed."""
        return not cls.missing_binaries()

    # -- state -------------------------------------------------------------------------------------

    @property
    def runtime_dir(self) -> Path | None:
        """The daemon's ``XDG_RUNTIME_DIR`` while running, else ``None``."""
        return self._dir

    @property
    def pid(self) -> int | None:
        """The daemon's PID while running, else ``None``."""
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None and pid_alive(self._pid)

    @property
    def monitor_source(self) -> str:
        """Name of the source that records what the sink plays."""
        return f"{self.sink_name}.monitor"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a client (this process or a child) needs to reach the daemon.

        Merge over ``os.environ``: ``{**os.environ, **sink.env}``.
        """
        if self._dir is None:
            raise RuntimeError("PulseNullSink is not running")
        return {
            "XDG_RUNTIME_DIR": str(self._dir),
            "PULSE_SERVER": f"unix:{self._dir}/pulse/native",
            "PULSE_COOKIE": str(self._dir / "config" / "pulse" / "cookie"),
        }

    @property
    def log_path(self) -> Path | None:
        return None if self._dir is None else self._dir / "pulseaudio.log"

    def _log_tail(self, n: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no daemon log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def _timed_log(self) -> list[tuple[float, str]]:
        """(daemon seconds, text) of each line of a ``--log-time`` log: ``(   1.916|   0.002) D: ...``."""
        path = self.log_path
        if path is None or not path.exists():
            return []
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            head, sep, text = line.partition(")")
            with contextlib.suppress(ValueError):
                if sep and head.startswith("("):
                    lines.append((float(head[1:].partition("|")[0]), text))
        return lines

    def stream_underruns(self) -> list[tuple[float, float, str]]:
        """When a client's playback stream ran dry, from the daemon's log (``log_underruns``):
        (wall start, wall end, the stream's media name: Chromium's is "Playback", skald's device's
        "ALSA Playback"). The sink plays silence for that stream meanwhile, so its recording
        slides by about that long: the machine did not run the player in time. The daemon names
        the stream when the underrun starts, not when it ends; each end is matched to the
        earliest open start."""
        if self._log_anchor is None:
            return []
        wall0, log0 = self._log_anchor
        found: list[list[Any]] = []
        open_ones: list[list[Any]] = []
        for t, text in self._timed_log():
            at = wall0 + t - log0
            if "Implicit underrun of '" in text or "Underrun on '" in text:
                entry = [at, at, text.split("'")[1]]
                found.append(entry)
                open_ones.append(entry)
            elif "end of underrun" in text and open_ones:
                open_ones.pop(0)[1] = at
        return [(start, end, name) for start, end, name in found]

    def pactl(self, *args: str, timeout_s: float = 5.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``pactl`` against this daemon."""
        return subprocess.run(
            ["pactl", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PulseNullSink:
        """Start the daemon and wait until it answers; returns self."""
        if self._dir is not None:
            return self
        missing = self.missing_binaries()
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: {INSTALL_HINT}")
        self._dir = Path(tempfile.mkdtemp(prefix="skald-pulse-"))
        try:
            # mkdtemp already uses 0700; explicit because the dir's mode is the socket's only access
            # control (auth-anonymous below) and libpulse expects a private runtime dir.
            self._dir.chmod(0o700)
            self._spawn()
        except BaseException:
            self.stop()
            raise
        _as_hardware(self.pid)
        # Belt and braces for an interpreter exit that skips fixture teardown (stop() is idempotent);
        # only a SIGKILLed test process can leak the daemon.
        atexit.register(self.stop)
        return self

    def _spawn(self) -> None:
        assert self._dir is not None
        daemon_env = {**os.environ, **self.env}
        # PULSE_SERVER is for clients; a daemon that sees it may decide one is already running.
        daemon_env.pop("PULSE_SERVER", None)
        daemon_env.pop("PULSE_COOKIE", None)
        daemon_env["HOME"] = str(self._dir)
        daemon_env["XDG_CONFIG_HOME"] = str(self._dir / "config")
        cmd = [
            "pulseaudio",
            "--daemonize=yes",
            "--exit-idle-time=-1",  # never exit because no client is connected
            "--disallow-exit",  # clients may not shut it down
            "--no-cpu-limit",  # the default RLIMIT_CPU watchdog can kill it on a loaded CI box
            "-n",  # no default.pa: exactly the modules below, no hardware probing, no D-Bus
            f"--log-target=newfile:{self._dir / 'pulseaudio.log'}",
            *(["--log-level=debug", "--log-time=1"] if self.log_underruns else []),
            # auth-anonymous: the socket is in a 0700 dir, so only this user can reach it anyway, and
            # clients then need no cookie even if PULSE_COOKIE is not passed on.
            "--load=module-native-protocol-unix auth-anonymous=1",
            f"--load=module-null-sink sink_name={self.sink_name} rate={self.rate} norewinds=1",
        ]
        # --daemonize returns once the daemon has initialised (or failed); the parent is reaped here.
        proc = subprocess.run(cmd, env=daemon_env, capture_output=True, text=True, timeout=self.start_timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(
                f"pulseaudio failed to start (exit {proc.returncode}): {proc.stderr.strip()}\n{self._log_tail()}"
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            info = self.pactl("info", timeout_s=2.0, check=False)
            if info.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not answer `pactl info`: {info.stderr.strip()}\n{self._log_tail()}")
            time.sleep(0.05)
        self._pid = int((self._dir / "pulse" / "pid").read_text().strip())
        self.pactl("set-default-sink", self.sink_name)
        self.pactl("set-default-source", self.monitor_source)
        if self.log_underruns:
            # The daemon logs the change before it answers: its log time then is (within pactl's
            # round trip, ~1 ms) this wall time.
            said = [
                t
                for t, text in self._timed_log()
                if f"configured_default_source: (unset) -> {self.monitor_source}" in text
            ]
            self._log_anchor = (time.time(), said[-1]) if said else None

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and remove the temp dir.  Idempotent."""
        pid = self._pid
        if pid is None and self._dir is not None:
            # Started but failed before we recorded the PID: it may still have written one.
            with contextlib.suppress(OSError, ValueError):
                pid = int((self._dir / "pulse" / "pid").read_text().strip())
        if pid is not None and pid_alive(pid) and _is_pulseaudio(pid):
            for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 2.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait_s
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not pid_alive(pid):
                    break
        self._pid = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> PulseNullSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PulseNullSink(sink={self.sink_name!r}, rate={self.rate}, pid={self._pid}, dir={self._dir})"


def reinitialize_portaudio() -> None:
    """Make this process's PortAudio re-enumerate devices (after changing the environment).

    PortAudio reference-counts ``Pa_Initialize``; it only really re-enumerates
    once the count drops to zero, so terminate as often as sounddevice has
    initialised and initialise the same number of times again.  Open streams are
    closed by this, so call it only between tests.
    """
    if "sounddevice" not in sys.modules:
        import sounddevice  # noqa: F401  # first import initialises with the current environment

        return
    sd: Any = sys.modules["sounddevice"]
    count = max(int(sd._initialized), 1)
    while sd._initialized > 0:
        sd._terminate()
    for _ in range(count):
        sd._initialize()


def require_audio_stack() -> None:
    """Fail the calling test (never skip) when the audio packages are missing."""
    missing = PulseNullSink.missing_binaries()
    if missing:
        pytest.fail(f"audio test rig needs {', '.join(missing)}: {INSTALL_HINT}", pytrace=False)
    # Look for the library without importing sounddevice: importing initialises PortAudio, whose ALSA
    # pulse plugin, with no server configured yet, litters ~/.config/pulse and /tmp/pulse-* (and for a
    # non-root user may autospawn a desktop daemon).
    if "sounddevice" not in sys.modules and ctypes.util.find_library("portaudio") is None:
        pytest.fail(f"PortAudio library not found: {INSTALL_HINT}", pytrace=False)


class _SessionSink:
    """The one daemon shared by every ``pulse_sink`` fixture instance in this process.

    Each test module that imports the fixture gets its own session-scoped
    FixtureDef (pytest keys fixtures by the module they are found in), so without
    this refcount two modules would start two daemons and fight over os.environ.
    """

    sink: PulseNullSink | None = None
    users = 0
    saved_env: dict[str, str | None] = {}  # noqa: RUF012  # class-level singleton state, on purpose

    @classmethod
    def acquire(cls) -> PulseNullSink:
        if cls.sink is None:
            require_audio_stack()
            sink = PulseNullSink()
            try:
                sink.start()
            except RuntimeError as exc:
                pytest.fail(f"could not start the PulseAudio null sink: {exc}", pytrace=False)
            cls.saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
            os.environ.update(sink.env)
            cls.sink = sink
            try:
                reinitialize_portaudio()
            except BaseException:
                cls.users += 1
                cls.release()
                raise
        cls.users += 1
        return cls.sink

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users > 0 or cls.sink is None:
            return
        for key, value in cls.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sink, cls.sink = cls.sink, None
        sink.stop()
        # PortAudio is deliberately NOT re-initialised here: with no server left, the ALSA pulse
        # plugin would litter ~/.config/pulse and /tmp/pulse-* and, for a non-root user, could
        # autospawn a daemon that outlives the session.  Its device list stays stale until
        # reinitialize_portaudio() is called, which only matters after the session.


@pytest.fixture(scope="session")
def pulse_sink() -> Iterator[PulseNullSink]:
    """A running null sink for the whole session; this process and its children are pointed at it.

    Sets ``XDG_RUNTIME_DIR``/``PULSE_SERVER``/``PULSE_COOKIE`` in ``os.environ``
    (so spawned actors inherit them) and re-initialises PortAudio so that
    ``sounddevice`` sees the ``pulse``/``default`` devices; the environment is
    restored, and the daemon stopped, at the end of the session.  One daemon serves every
    module that imports this fixture.  Missing packages make the test fail with
    the install command, not skip: a skipped device test would hide that the real
    playback path went untested.
    """
    sink = _SessionSink.acquire()
    try:
        yield sink
    finally:
        _SessionSink.release()


# --------------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------------


class MonitorRecorder:
    """Records a PulseAudio source (by default the null sink's monitor) with ``parec``.

    The recorder's stdout is drained continuously on a thread, so the pipe never
    fills and parec never blocks (a blocked recorder would silently lose audio).
    """

    def __init__(
        self,
        rate: int,
        source: str = "vsink.monitor",
        *,
        env: Mapping[str, str] | None = None,
        latency_msec: int = 20,
    ) -> None:
        self.rate = rate
        self.source = source
        self.latency_msec = latency_msec
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._chunks: list[bytes] = []
        self._nbytes = 0
        self._first = threading.Event()
        self.first_bytes_at: float | None = None
        """``time.monotonic()`` when the first bytes arrived (sample 0 of the recording)."""

    @property
    def samples_recorded(self) -> int:
        return self._nbytes // 2

    def start(self, timeout_s: float = 5.0) -> MonitorRecorder:
        """Start ``parec`` and wait for its first bytes, so nothing played afterwards is missed."""
        cmd = [
            "parec",
            f"--device={self.source}",
            "--format=s16le",
            f"--rate={self.rate}",
            "--channels=1",
            "--raw",
            f"--latency-msec={self.latency_msec}",
        ]
        # Kept open for the recorder's lifetime (closed in _stop_process), so no `with` block.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, env=self._env)
        _as_hardware(self._proc.pid)
        assert self._proc.stdout is not None
        # A 1-MiB pipe (~23 s at 22.05 kHz) instead of 64 KiB (1.5 s): a drain thread starved by a
        # loaded test machine must not block parec, whose source output would then overrun and
        # drop audio from the recording that was played perfectly well.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        self._thread = threading.Thread(target=self._drain, name="parec-drain", daemon=True)
        self._thread.start()
        if not self._first.wait(timeout_s):
            err = self._stop_process()
            raise RuntimeError(f"parec produced no audio within {timeout_s} s: {err}")
        return self

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if self.first_bytes_at is None:
                self.first_bytes_at = time.monotonic()
                self._first.set()
            self._chunks.append(chunk)
            self._nbytes += len(chunk)

    def wait_for_samples(self, n: int, timeout_s: float = 5.0) -> bool:
        """Wait until at least ``n`` samples have been recorded; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.samples_recorded < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_until_covered(self, t_monotonic: float, timeout_s: float = 10.0) -> bool:
        """Wait until the recording reaches ``t_monotonic`` (sample 0 is ``first_bytes_at``):
        on a loaded machine parec's reads lag the sink, so a fixed sleep before ``stop`` can cut
        off the end of what was played. False on timeout."""
        assert self.first_bytes_at is not None, "start() first"
        return self.wait_for_samples(int((t_monotonic - self.first_bytes_at) * self.rate) + 1, timeout_s)

    def _stop_process(self) -> str:
        """Stop parec and the drain thread; return parec's stderr."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3.0)
        if self._thread is not None:
            self._thread.join(timeout=3.0)
            self._thread = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        err = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace").strip()
            self._stderr.close()
            self._stderr = None
        return err

    def stop(self) -> npt.NDArray[np.int16]:
        """Stop recording and return everything recorded as mono int16."""
        self._stop_process()
        data = b"".join(self._chunks)
        data = data[: len(data) - len(data) % 2]
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def __enter__(self) -> MonitorRecorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_process()


# --------------------------------------------------------------------------------------------------
# Playback
# --------------------------------------------------------------------------------------------------


@dataclass
class PlaybackReport:
    """What happened while :func:`play_through_callback` played a signal."""

    rate: int
    blocksize: int
    callback_times: list[float] = field(default_factory=list)
    """``time.monotonic()`` at each callback."""
    status_flags: list[str] = field(default_factory=list)
    """Non-empty PortAudio status flags seen (e.g. 'output underflow')."""
    output_latency_s: float = 0.0
    """The stream's reported output latency."""
    first_callback_at: float | None = None

    @property
    def intervals_s(self) -> npt.NDArray[np.float64]:
        return np.diff(np.asarray(self.callback_times, dtype=np.float64))


def play_through_callback(
    signal_int16: npt.NDArray[np.int16],
    rate: int,
    *,
    blocksize: int = 512,
    device: int | str | None = None,
    tail_pad_s: float = TAIL_PAD_S,
    timeout_s: float | None = None,
) -> PlaybackReport:
    """Play a mono int16 signal through a callback-mode ``sounddevice.OutputStream``; block until done.

    Appends ``tail_pad_s`` of silence because the pulse plugin drops the last
    ~40 ms when the stream is closed.
    """
    import sounddevice as sd

    sig = np.concatenate([np.asarray(signal_int16, dtype=np.int16), np.zeros(round(tail_pad_s * rate), np.int16)])
    report = PlaybackReport(rate=rate, blocksize=blocksize)
    done = threading.Event()
    pos = 0

    def callback(outdata: npt.NDArray[np.int16], frames: int, _time: Any, status: Any) -> None:
        nonlocal pos
        report.callback_times.append(time.monotonic())
        if status:
            report.status_flags.append(str(status))
        chunk = sig[pos : pos + frames]
        outdata[: len(chunk), 0] = chunk
        outdata[len(chunk) :, 0] = 0
        pos += frames
        if pos >= len(sig):
            raise sd.CallbackStop  # plays out what is queued, then finished_callback

    stream = sd.OutputStream(
        samplerate=rate,
        blocksize=blocksize,
        device=device,
        channels=1,
        dtype="int16",
        callback=callback,
        finished_callback=done.set,
    )
    with stream:
        report.output_latency_s = float(stream.latency)
        if not done.wait(timeout_s if timeout_s is not None else len(sig) / rate + 5.0):
            raise RuntimeError("playback did not finish in time (is the device paced by a clock?)")
    report.first_callback_at = report.callback_times[0] if report.callback_times else None
    return report


# --------------------------------------------------------------------------------------------------
# Signals and analysis
# --------------------------------------------------------------------------------------------------


def tone(freq_hz: float, duration_s: float, rate: int, amplitude: float = 0.5) -> npt.NDArray[np.float64]:
    """A sine tone in [-1, 1] floats."""
    t = np.arange(round(duration_s * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


def to_int16(signal_float: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """[-1, 1] floats to int16, clipping."""
    return np.clip(np.round(np.asarray(signal_float, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def _loud_indices(signal: npt.ArrayLike, threshold: float) -> npt.NDArray[np.intp]:
    # int32 first: abs(-32768) overflows in int16.
    return np.flatnonzero(np.abs(np.asarray(signal).astype(np.int32)) > threshold)


def speech_span(
    signal_int16: npt.ArrayLike, rate: int, threshold: float = DEFAULT_SILENCE_THRESHOLD
) -> tuple[float, float] | None:
    """``(start_s, end_s)`` from the first to just after the last sample above ``threshold``.

    ``None`` if the whole signal is silent.
    """
    loud = _loud_indices(signal_int16, threshold)
    if loud.size == 0:
        return None
    return float(loud[0]) / rate, float(loud[-1] + 1) / rate


def find_gaps(
    signal_int16: npt.ArrayLike,
    rate: int,
    threshold: float = DEFAULT_SILENCE_THRESHOLD,
    min_gap_ms: float = 20.0,
) -> list[tuple[float, float]]:
    """Silent runs inside the sound, as ``(start_s, duration_s)``; leading/trailing silence is ignored.

    A sample is silent when ``|x| <= threshold`` (int16 units).  Runs shorter than
    ``min_gap_ms`` are ignored: a waveform crosses zero constantly, and speech has
    brief quiet stretches, so only runs longer than that are reported.  Sample-exact:
    the start is the first silent sample, the duration counts silent samples.
    """
    loud = _loud_indices(signal_int16, threshold)
    if loud.size < 2:
        return []
    min_samples = max(1, round(min_gap_ms * rate / 1000.0))
    silent_run = np.diff(loud) - 1  # silent samples between consecutive loud ones
    where = np.flatnonzero(silent_run >= min_samples)
    return [(float(loud[i] + 1) / rate, float(silent_run[i]) / rate) for i in where]


def align(
    reference_float: npt.ArrayLike,
    recorded_int16: npt.ArrayLike,
    rate: int,
    max_lag_s: float | None = None,
) -> tuple[int, float]:
    """Where ``reference`` starts inside ``recorded``, and how well it matches there.

    FFT cross-correlation over every lag at which the reference fits entirely
    inside the recording (the recorder is started before playback, so the
    reference starts at a lag >= 0).  The lag with the largest raw correlation is
    chosen (energy-weighted, so a quiet noisy stretch cannot win), then the
    correlation is normalised by both signals' energy over the overlap, giving a
    cosine similarity in [-1, 1] (1 = identical up to gain).

    Both signals must be at the same sample ``rate``; ``max_lag_s`` limits the
    search.  Returns ``(offset_samples, peak_normalised_correlation)``.
    """
    ref = np.asarray(reference_float, dtype=np.float64).ravel()
    rec = np.asarray(recorded_int16, dtype=np.float64).ravel() / 32768.0
    if ref.size == 0:
        raise ValueError("align: empty reference")
    if rec.size < ref.size:
        rec = np.concatenate([rec, np.zeros(ref.size - rec.size)])
    n_lags = rec.size - ref.size + 1
    if max_lag_s is not None:
        n_lags = min(n_lags, round(max_lag_s * rate) + 1)
    nfft = 1 << int(np.ceil(np.log2(rec.size + ref.size)))
    # corr[k] = sum_i rec[k + i] * ref[i]
    corr = np.fft.irfft(np.fft.rfft(rec, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)[:n_lags]
    lag = int(np.argmax(corr))
    window = rec[lag : lag + ref.size]
    denom = float(np.sqrt(np.dot(ref, ref) * np.dot(window, window)))
    score = float(corr[lag]) / denom if denom > 0 else 0.0
    return lag, score
