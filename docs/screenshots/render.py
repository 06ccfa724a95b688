"""Render what `ckptguard scan` shows in a real terminal, for docs/screenshots/.

    python docs/screenshots/render.py            # needs tmux and Pillow

For each width (80 and 200 columns) it builds a demo folder of model files from
fixtures/ (a safe safetensors model, a hostile pickle renamed pytorch_model.bin, a
checkpoint with argparse hyperparameters, a sharded checkpoint with its index, an empty
file), runs `ckptguard scan` (and `-v` at 80 columns) in a tmux session of that size with
TERM=xterm-256color, captures the pane with its colours (`tmux capture-pane -e`), and
writes

* scan-<W>[-verbose].txt  the screen as text (colours removed), and
* scan-<W>[-verbose].png  the screen drawn with DejaVu Sans Mono (ANSI colours parsed by
  rich's Text.from_ansi, drawn with Pillow).

Nothing here is imported by the package or the tests.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
BG, FG = (30, 30, 30), (212, 212, 212)
PALETTE = {  # xterm's standard colours, as most terminals draw them
    "black": (0, 0, 0), "red": (224, 84, 84), "green": (97, 199, 97),
    "yellow": (221, 187, 85), "blue": (90, 140, 230), "magenta": (200, 110, 200),
    "cyan": (80, 190, 200), "white": (220, 220, 220),
}


def demo_folder(root: Path) -> Path:
    """models/ with the files a person might really have lying around."""
    from ckptguard.cli.discover import INDEX_SUFFIX  # noqa: F401  (the package is importable)

    models = root / "models"
    fx = ROOT / "fixtures"
    files = {
        "bert-base/model.safetensors": None,
        "bert-base/pytorch_model.bin": fx / "hostile" / "global_reduce_posix_system.pkl",
        "runs/2026-11-27_lr3e-4_warmup2000/checkpoint-epoch-12.ckpt":
            fx / "medium" / "argparse_namespace.pt",
        "resnet/resnet50_legacy.pt": fx / "benign" / "legacy_format.pt",
        "scratch/empty.bin": b"",
    }
    for rel, src in files.items():
        path = models / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if src is None:
            path.write_bytes(_safetensors({"w": [2, 2]}))
        elif isinstance(src, bytes):
            path.write_bytes(src)
        else:
            path.write_bytes(src.read_bytes())
    sharded = models / "llama-tiny"
    sharded.mkdir()
    weight_map = {}
    for i in (1, 2):
        name = f"model-0000{i}-of-00002.safetensors"
        (sharded / name).write_bytes(_safetensors({f"layer{i}.w": [4]}))
        weight_map[f"layer{i}.w"] = name
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (models / "README.md").write_text("# notes\n")
    return models


def _safetensors(shapes: dict[str, list[int]]) -> bytes:
    import struct

    header: dict[str, object] = {}
    data = b""
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [len(data), len(data) + n]}
        data += b"\0" * n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def capture(cwd: Path, width: int, height: int, args: list[str]) -> str:
    """Run `ckptguard scan ARGS` in a WIDTHxHEIGHT tmux session; the screen with colours."""
    session = f"ckg-shot-{uuid.uuid4().hex[:8]}"
    done = cwd / f"done-{session}"
    shown = "ckptguard scan " + " ".join(args)
    cmd = (f"cd {shlex.quote(str(cwd))}; printf '%s\\n' {shlex.quote('$ ' + shown)}; "
           f"{shlex.quote(sys.executable)} -m ckptguard scan "
           f"{' '.join(shlex.quote(a) for a in args)}; touch {shlex.quote(str(done))}; "
           "sleep 60")
    env = (f"env -u NO_COLOR -u COLUMNS -u LINES TERM=xterm-256color "
           f"PYTHONPATH={shlex.quote(str(ROOT / 'src'))} ")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y",
                    str(height), env + "bash --norc -c " + shlex.quote(cmd)], check=True)
    try:
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        return subprocess.run(["tmux", "capture-pane", "-p", "-e", "-t", session],
                              check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False,
                       capture_output=True)


def to_png(screen: str, width: int, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont
    from rich.text import Text

    size = 15
    regular = ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono.ttf"), size)
    bold = ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono-Bold.ttf"), size)
    cell_w = regular.getlength("M")
    cell_h = int(size * 1.45)
    # tmux emits an attribute change only where it changes, also across line ends: parse
    # the whole screen at once, then split it into lines
    lines = Text.from_ansi(screen.rstrip("\n")).split("\n", allow_blank=True)
    pad = 14
    img = Image.new("RGB", (int(cell_w * width) + 2 * pad, cell_h * len(lines) + 2 * pad), BG)
    draw = ImageDraw.Draw(img)
    for row, text in enumerate(lines):
        y = pad + row * cell_h
        col = 0
        for segment in text.render(_console()):
            style = segment.style
            fg = FG
            number = style.color.number if style is not None and style.color else None
            if number is not None and number < 16:
                fg = list(PALETTE.values())[number % 8]
            elif style is not None and style.color is not None:
                tc = style.color.get_truecolor()
                fg = (tc.red, tc.green, tc.blue)
            if style is not None and style.dim:
                fg = tuple(int(c * 0.6) for c in fg)  # type: ignore[assignment]
            font = bold if style is not None and style.bold else regular
            for ch in segment.text:
                draw.text((pad + col * cell_w, y), ch, font=font, fill=fg)
                col += 1
    img.save(path)


def _console() -> object:
    from rich.console import Console

    return Console(width=400, color_system="truecolor", force_terminal=True)


def strip_ansi(screen: str) -> str:
    from rich.text import Text

    return "\n".join(Text.from_ansi(ln).plain.rstrip() for ln in screen.split("\n")).rstrip() + "\n"


def main() -> int:
    if shutil.which("tmux") is None:
        print("tmux is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ckg-shots-") as tmp:
        cwd = Path(tmp)
        demo_folder(cwd)
        for width, height, args, name in (
                (80, 24, ["models"], "scan-80"),
                (200, 16, ["models"], "scan-200"),
                (80, 44, ["-v", "models/bert-base", "models/runs"], "scan-80-verbose")):
            screen = capture(cwd, width, height, args)
            (OUT / f"{name}.txt").write_text(strip_ansi(screen), encoding="utf-8")
            to_png(screen, width, OUT / f"{name}.png")
            print(f"wrote {OUT / name}.txt and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
