"""Progress bars: shown on a terminal after a delay, never when output is not a terminal."""

import os
import subprocess
import sys

from probes import progress


def test_not_a_terminal_shows_nothing(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "0")
    with progress.progress(10, "work") as bar:
        bar.update(10)
    assert bar.disable
    out, err = capsys.readouterr()
    assert out == err == ""


def test_terminal_bar_reports_position_and_time_left(tmp_path):
    # a pseudo-terminal as stderr: the bar appears after the delay and shows n/total and ETA
    import pty
    code = ("import time; from probes import progress as p; p.DELAY_S = 0.0\n"
            "with p.progress(4, 'hashing', unit='B') as b:\n"
            "    for _ in range(4): b.update(1); time.sleep(0.6)\n")
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != progress.ENV}
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=slave,
                            cwd=os.path.dirname(os.path.dirname(progress.__file__)), env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "hashing" in text and "/4" in text and "<" in text   # n/total [elapsed<left]


def _captured(monkeypatch):
    """Bars shown at once, into a buffer standing in for the terminal."""
    import io
    buf = io.StringIO()
    monkeypatch.setattr(progress, "_stream", lambda: buf)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    return buf


def test_long_work_reports_progress(monkeypatch, tmp_path):
    """The streamed forward pass, the Gram and head-metric passes and GGUF conversion each
    drive a bar (what, how far, time left) when output is a terminal."""
    from benchmarks.make_gguf import write_gguf
    from probes import activations, calibration, head_metric, weight_gram
    from probes.models import open_model
    from probes.models.gguf_tensors import GGUFTensors
    model = open_model("synthetic:tiny-qwen3")
    buf = _captured(monkeypatch)
    tc = calibration.tokenize(calibration.load_corpus(), model.encode, 100)
    activations.compute(model, tc)
    assert "residual stream" in buf.getvalue() and "/8 [" in buf.getvalue()  # n/8 layers
    weight_gram.family_gram(model, "q_proj")
    assert "Gram pass q_proj" in buf.getvalue()
    head_metric.compute(model)
    assert "head metric" in buf.getvalue()
    llama = open_model("synthetic:tiny-llama")
    path = tmp_path / "t.gguf"
    write_gguf(llama, path, "F16")
    GGUFTensors(path).write(tmp_path / "m.safetensors")
    assert "dequantizing t.gguf" in buf.getvalue()
