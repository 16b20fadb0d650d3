"""``kws-listen``: live keyword spotting from the terminal, through the service's streaming sessions.

    kws-listen [--url http://localhost/]                 the default microphone, until Ctrl-C
    kws-listen --file talk.wav [--fast]                  a recording played in real time (--fast: no waiting)
    kws-listen --list-devices | --device N | --json | --threshold 0.7 | --chunk-ms 100

Audio goes to ``POST <url>stream`` (a session) and then ``POST <url>stream/<id>`` in chunks of
``--chunk-ms`` (default: the session's ``chunk.recommended_ms``, whole window strides, so
no window waits for the rest of a chunk; 32-bit float, 16 kHz mono); each detection is printed as it comes back:
``12.34 s  yes  0.93`` (stream time, keyword, confidence), or one JSON object per line with
``--json``. A file is decoded like ``/predict`` decodes an upload (:func:`kws.audio.decode`), so
``kws-listen --file F --fast`` prints the detections ``kws-predict F`` lists.

The microphone is read with ``sounddevice`` (PortAudio), imported only when it is used: a file
needs no audio device. Chunks that queued up while an answer was out (a slow network, a busy
service) go together in the next request, up to the session's chunk limit, like the page does:
one request per chunk would never catch up once behind. The samples and their order are the
same. When the service loses the session (a restarted or drained replica: 404/410), a new one
is opened and the chunk sent again; stream times go on from where they were.
Exit status: 0 done (end of the file, or Ctrl-C), 1 the service refused the audio, 2 the service
cannot be reached, no microphone, or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kws.client import base_url
from kws.errors import KWSError

DEFAULT_URL = "http://localhost/"
SAMPLE_RATE = 16000
EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2
LOST = {"unknown_session", "session_expired", "session_closed"}


class Unreachable(KWSError):
    code = "unreachable"


class NoMicrophone(KWSError):
    code = "no_microphone"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kws-listen", description="Spot keywords live, from the microphone or a file.")
    p.add_argument("--url", default=os.environ.get("KWS_URL", DEFAULT_URL),
                   help=f"base URL of the service (default $KWS_URL or {DEFAULT_URL})")
    p.add_argument("--file", type=Path, default=None, help="stream this recording instead of the microphone")
    p.add_argument("--fast", action="store_true", help="with --file: send the chunks without real-time waiting")
    p.add_argument("--device", default=None, help="input device (number or name; see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    p.add_argument("--chunk-ms", type=float, default=None,
                   help="audio per request, 50..1000 ms (default: the session's recommendation, whole strides)")
    p.add_argument("--threshold", type=float, default=None, help="detection threshold 0..1 (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object per detection")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    args = p.parse_args(argv)
    if args.chunk_ms is not None and not 50 <= args.chunk_ms <= 1000:
        p.error("--chunk-ms must be between 50 and 1000")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error("--threshold must be between 0 and 1")
    if args.fast and args.file is None:
        p.error("--fast needs --file (a microphone cannot go faster than real time)")
    return args


class StreamClient:
    """One live stream over the session API; reopens a lost session (see the module doc)."""

    def __init__(self, url: str, threshold: float | None = None, timeout: float = 10.0):
        import requests

        self._requests = requests
        self.http = requests.Session()
        self.url = base_url(url)
        self.threshold = threshold
        self.timeout = timeout
        self.session: dict[str, Any] | None = None
        self.seq = 0
        self.offset_s = 0.0  # stream time at which the current session started
        self.t_s = 0.0

    def _call(self, method: str, path: str, **kw) -> tuple[int, dict]:
        url = self.url + path
        try:
            resp = self.http.request(method, url, timeout=self.timeout, **kw)
        except self._requests.exceptions.Timeout:
            raise Unreachable(f"no answer from the kws service at {url} within {self.timeout:g} s") from None
        except self._requests.exceptions.ConnectionError:
            raise Unreachable(f"cannot reach the kws service at {url}: is it running?") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Unreachable(f"HTTP {resp.status_code} from {url} is not a kws answer (wrong --url?)")
        return resp.status_code, body

    @staticmethod
    def _refused(status: int, body: dict) -> KWSError:
        err = body.get("error") or {}
        return KWSError(f"{err.get('message') or f'HTTP {status}'} [{err.get('code', status)}]",
                        code=err.get("code", "refused"), status=status)

    def open(self) -> dict[str, Any]:
        params = {} if self.threshold is None else {"threshold": self.threshold}
        for attempt in range(3):  # a draining replica says 503 shutting_down: another one takes it
            status, body = self._call("POST", "stream", params=params)
            if status == 201:
                self.session, self.seq, self.offset_s = body, 0, self.t_s
                return body
            if status != 503 or attempt == 2:
                raise self._refused(status, body)
            time.sleep(0.5)
        raise AssertionError("unreachable")

    def send(self, samples: np.ndarray) -> list[dict[str, Any]]:
        """Post one chunk; its detections with stream times (from the first chunk of this client)."""
        if self.session is None:
            self.open()
        data = np.ascontiguousarray(samples, "<f4").tobytes()
        for _ in range(2):
            status, body = self._call("POST", f"stream/{self.session['session']}", data=data,
                                      params={"format": "f32", "seq": self.seq},
                                      headers={"Content-Type": "application/octet-stream"})
            if status == 200:
                self.seq += 1
                self.t_s = self.offset_s + body["t_s"]
                return [{**d, "time_s": round(d["time_s"] + self.offset_s, 3)} for d in body["detections"]]
            if (body.get("error") or {}).get("code") not in LOST:
                raise self._refused(status, body)
            self.open()  # the session is gone (replica restarted, drained, expired): go on in a new one
        raise self._refused(status, body)

    def close(self) -> None:
        if self.session is not None:
            try:
                self._call("DELETE", f"stream/{self.session['session']}")
            except Unreachable:
                pass
            self.session = None
        self.http.close()


# --------------------------------------------------------------------------- audio sources
class ChunkJoiner:
    """Audio in, requests out: whole ``chunk`` sample chunks, as many together as have arrived,
    at most ``most`` samples per request (the session's limit); the rest waits for more."""

    def __init__(self, chunk: int, most: int):
        self.chunk = int(chunk)
        self.most = max(self.chunk, int(most) // self.chunk * self.chunk)
        self.pending = np.zeros(0, np.float32)

    def add(self, samples: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, np.asarray(samples, np.float32)])

    def take(self) -> Iterator[np.ndarray]:
        while len(self.pending) >= self.chunk:
            n = min(len(self.pending) // self.chunk * self.chunk, self.most)
            out, self.pending = self.pending[:n], self.pending[n:]
            yield out


def file_chunks(path: Path, chunk_ms: float, realtime: bool, most: int) -> Iterator[np.ndarray]:
    """The recording decoded like an upload to ``/predict``, in chunks, paced like a microphone:
    each request has the chunks whose last sample has been "said" by now (at most ``most``
    samples); ``--fast`` sends one chunk per request."""
    from kws.audio import decode

    audio = decode(path.read_bytes(), SAMPLE_RATE, max_duration_s=24 * 3600).samples
    n = int(round(chunk_ms * SAMPLE_RATE / 1000))
    if not realtime:
        yield from (audio[i:i + n] for i in range(0, len(audio), n))
        return
    start, i = time.monotonic(), 0
    while i < len(audio):
        # a microphone has a chunk only once its last sample was said
        time.sleep(max(0.0, start + min(i + n, len(audio)) / SAMPLE_RATE - time.monotonic()))
        said = int((time.monotonic() - start) * SAMPLE_RATE)
        k = max(1, min((said - i) // n, most // n))  # the chunks said by now, within the session's limit
        end = min(len(audio), i + k * n)
        yield audio[i:end]
        i = end


def _sounddevice():
    try:
        import sounddevice
    except OSError as err:  # the binding is installed but PortAudio is not
        raise NoMicrophone(f"audio capture is not available ({err}); install PortAudio "
                           "(apt-get install libportaudio2) or use --file") from None
    except ImportError:
        raise NoMicrophone("audio capture needs the sounddevice package (pip install sounddevice) or use --file") from None
    return sounddevice


def list_devices() -> str:
    return str(_sounddevice().query_devices()) or "no audio devices found"


def mic_chunks(chunk_ms: float, device: str | None, most: int) -> Iterator[np.ndarray]:
    """Chunks from an input device at 16 kHz (resampled with soxr's streaming resampler when the
    device cannot record at 16 kHz itself), until the generator is closed; the chunks that queued
    up meanwhile together, at most ``most`` samples (:class:`ChunkJoiner`)."""
    import soxr

    sd = _sounddevice()
    dev = int(device) if device is not None and device.isdigit() else device
    try:
        info = sd.query_devices(dev, "input")
    except (ValueError, sd.PortAudioError) as err:
        raise NoMicrophone(f"no microphone: {err} (see kws-listen --list-devices, or use --file)") from None
    try:
        sd.check_input_settings(device=dev, channels=1, samplerate=SAMPLE_RATE, dtype="float32")
        rate = SAMPLE_RATE
    except (ValueError, sd.PortAudioError):
        rate = int(info["default_samplerate"])
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
    blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=100)

    def callback(indata, _frames, _time, _status):
        try:
            blocks.put_nowait(indata[:, 0].copy())
        except queue.Full:  # the network is stalled: drop audio rather than grow without bound
            pass

    n = int(round(chunk_ms * SAMPLE_RATE / 1000))
    try:
        stream = sd.InputStream(device=dev, channels=1, samplerate=rate, dtype="float32",
                                blocksize=int(round(chunk_ms * rate / 1000)), callback=callback)
    except sd.PortAudioError as err:
        raise NoMicrophone(f"cannot open the microphone {info['name']!r}: {err}") from None
    joiner = ChunkJoiner(n, most)
    with stream:
        print(f"kws-listen: listening on {info['name']!r} ({rate} Hz); Ctrl-C to stop", file=sys.stderr, flush=True)
        while True:
            got = [blocks.get()]
            while not blocks.empty():
                got.append(blocks.get_nowait())
            for block in got:
                joiner.add(block if resampler is None else resampler.resample_chunk(block))
            yield from joiner.take()


# --------------------------------------------------------------------------- main
def format_detection(det: dict[str, Any]) -> str:
    return f"{det['time_s']:7.2f} s  {det['keyword']}  {det['confidence']:.2f}"


def run(args: argparse.Namespace) -> int:
    client = StreamClient(args.url, args.threshold, args.timeout)
    source = None
    try:
        opened = client.open()
        print(f"kws-listen: session open ({opened['model']['name']} v{opened['model']['version']}, "
              f"threshold {opened['detector']['threshold']:g})", file=sys.stderr, flush=True)
        most = int(opened.get("chunk", {}).get("max_bytes", 0)) // 4  # float32 samples per request
        chunk_ms = args.chunk_ms or float(opened.get("chunk", {}).get("recommended_ms", 100.0))
        source = file_chunks(args.file, chunk_ms, not args.fast, most) if args.file else \
            mic_chunks(chunk_ms, args.device, most)
        for chunk in source:
            for det in client.send(chunk):
                print(json.dumps(det) if args.json else format_detection(det), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if source is not None:
            source.close()
        client.close()
    print(f"kws-listen: {client.t_s:.1f} s of audio streamed", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list_devices:
            print(list_devices())
            return EXIT_OK
        if args.file is not None and not args.file.is_file():
            print(f"kws-listen: {args.file}: no such file", file=sys.stderr)
            return EXIT_UNREACHABLE
        return run(args)
    except (Unreachable, NoMicrophone) as err:
        print(f"kws-listen: {err.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KWSError as err:
        print(f"kws-listen: {err.message}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
