"""The built-in dataset: procedurally drawn faces, deterministic from (seed, index).

Varied enough that a GAN has something to learn and a mode collapse is visible
at a glance: background, face shape and position, skin tone, hair colour and
style, eyes, brows, nose, mouth and glasses all vary independently. Each face is
drawn at 4x the target size with PIL and downsampled, which antialiases it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_face"]

SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 90), (161, 102, 64),
        (118, 72, 42), (86, 52, 32)]
HAIR = [(20, 16, 14), (60, 40, 26), (110, 72, 40), (180, 130, 70), (230, 200, 130),
        (160, 50, 30), (140, 140, 140), (240, 240, 235), (60, 70, 160), (170, 60, 140)]
IRIS = [(60, 40, 20), (40, 90, 160), (60, 120, 60), (110, 90, 60), (30, 30, 30)]
LIPS = [(190, 80, 80), (160, 60, 70), (210, 110, 110), (130, 60, 60)]
FRAMES = [(15, 15, 15), (120, 70, 30), (180, 30, 30), (200, 200, 210), (30, 60, 140)]

SCALE = 4


def _jitter(rng: np.random.Generator, color, amount: int = 18) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _pick(rng: np.random.Generator, palette):
    return palette[rng.integers(len(palette))]


def draw_face(seed: int, index: int, size: int) -> np.ndarray:
    """One face as uint8 (size, size, 3); the same (seed, index) always gives the same face."""
    rng = np.random.default_rng([seed, index])
    s = size * SCALE
    u = s / 64  # drawing units: a 64-pixel canvas, scaled

    top = _jitter(rng, tuple(rng.integers(30, 230, 3)), 0)
    bottom = _jitter(rng, top, 60)
    ramp = np.linspace(0, 1, s)[:, None, None]
    background = (1 - ramp) * np.array(top) + ramp * np.array(bottom)
    image = Image.fromarray(np.broadcast_to(background, (s, s, 3)).astype(np.uint8))
    d = ImageDraw.Draw(image)

    cx = s / 2 + rng.normal(0, 2.5) * u
    cy = s / 2 + rng.normal(2, 2.0) * u
    fw = rng.uniform(15, 21) * u  # half-width of the face
    fh = fw * rng.uniform(1.15, 1.45)
    skin = _jitter(rng, _pick(rng, SKIN))
    hair = _jitter(rng, _pick(rng, HAIR), 12)
    style = rng.choice(["short", "long", "bangs", "bald", "bun", "curly"],
                       p=[0.25, 0.25, 0.2, 0.08, 0.1, 0.12])

    if style == "long":  # hair behind the face, down to the shoulders
        d.rounded_rectangle([cx - fw * 1.35, cy - fh * 1.1, cx + fw * 1.35, cy + fh * 1.25],
                            radius=int(fw * 0.9), fill=hair)
    if style == "bun":
        r = fw * 0.5
        d.ellipse([cx - r, cy - fh * 1.45 - r, cx + r, cy - fh * 1.45 + r], fill=hair)
    if style == "curly":
        for a in np.linspace(np.pi * 0.9, np.pi * 2.1, 11):
            r = fw * rng.uniform(0.35, 0.5)
            x, y = cx + np.cos(a) * fw * 1.05, cy + np.sin(a) * fh * 0.95
            d.ellipse([x - r, y - r, x + r, y + r], fill=hair)

    # Neck and shoulders, then ears, then the face.
    shirt = _jitter(rng, tuple(rng.integers(20, 235, 3)), 0)
    d.rectangle([cx - fw * 0.45, cy + fh * 0.6, cx + fw * 0.45, cy + fh * 1.4], fill=skin)
    d.ellipse([cx - fw * 2.0, cy + fh * 1.15, cx + fw * 2.0, cy + fh * 2.6], fill=shirt)
    ear = fw * 0.22
    for side in (-1, 1):
        ex = cx + side * fw * 0.97
        d.ellipse([ex - ear, cy - ear * 1.3, ex + ear, cy + ear * 1.3], fill=skin)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)

    if style in ("short", "long", "bangs", "bun", "curly"):  # hair on top of the head
        d.chord([cx - fw * 1.08, cy - fh * 1.12, cx + fw * 1.08, cy + fh * 0.5],
                start=180, end=360, fill=hair)
        if style == "bangs":
            d.rectangle([cx - fw * 0.95, cy - fh * 0.75, cx + fw * 0.95, cy - fh * 0.38], fill=hair)
        elif style != "curly":
            d.ellipse([cx - fw * 0.85, cy - fh * 0.95, cx + fw * 0.85, cy - fh * 0.25], fill=skin)
            d.rectangle([cx - fw * 0.85, cy - fh * 0.6, cx + fw * 0.85, cy - fh * 0.45], fill=skin)

    # Eyes and brows.
    eye_y = cy - fh * rng.uniform(0.05, 0.2)
    spacing = fw * rng.uniform(0.36, 0.5)
    ew, eh = fw * rng.uniform(0.16, 0.24), fw * rng.uniform(0.09, 0.15)
    iris = _jitter(rng, _pick(rng, IRIS), 10)
    brow_lift = fh * rng.uniform(0.12, 0.22)
    brow_tilt = rng.uniform(-0.12, 0.18) * fw
    brow_width = max(1, int(u * rng.uniform(1.0, 2.6)))
    for side in (-1, 1):
        ex = cx + side * spacing
        d.ellipse([ex - ew, eye_y - eh, ex + ew, eye_y + eh], fill=(245, 245, 245))
        r = eh * 0.95
        d.ellipse([ex - r, eye_y - r, ex + r, eye_y + r], fill=iris)
        d.ellipse([ex - r * 0.45, eye_y - r * 0.45, ex + r * 0.45, eye_y + r * 0.45], fill=(10, 10, 10))
        inner, outer = ex - side * ew * 1.1, ex + side * ew * 1.2
        d.line([inner, eye_y - brow_lift, outer, eye_y - brow_lift - brow_tilt],
               fill=tuple(int(c * 0.7) for c in hair), width=brow_width)

    # Nose.
    shade = tuple(int(c * 0.78) for c in skin)
    nose_len = fh * rng.uniform(0.22, 0.38)
    nose_w = fw * rng.uniform(0.1, 0.2)
    ny = eye_y + nose_len
    d.line([cx, eye_y + eh, cx + nose_w * 0.4, ny], fill=shade, width=max(1, int(u)))
    d.line([cx - nose_w, ny, cx + nose_w, ny], fill=shade, width=max(1, int(u * 1.2)))

    # Mouth: a smile, a frown, a straight line or an open mouth.
    my = ny + (cy + fh - ny) * rng.uniform(0.35, 0.5)
    mw = fw * rng.uniform(0.3, 0.55)
    lips = _jitter(rng, _pick(rng, LIPS), 12)
    mood = rng.choice(["smile", "frown", "flat", "open"])
    lw = max(1, int(u * rng.uniform(1.2, 2.2)))
    if mood == "smile":
        d.arc([cx - mw, my - mw * 0.6, cx + mw, my + mw * 0.4], 20, 160, fill=lips, width=lw)
    elif mood == "frown":
        d.arc([cx - mw, my, cx + mw, my + mw * 0.8], 200, 340, fill=lips, width=lw)
    elif mood == "flat":
        d.line([cx - mw, my, cx + mw, my], fill=lips, width=lw)
    else:
        d.ellipse([cx - mw * 0.6, my - mw * 0.25, cx + mw * 0.6, my + mw * 0.35], fill=(90, 20, 30),
                  outline=lips, width=lw)

    if rng.random() < 0.3:  # glasses
        frame = _jitter(rng, _pick(rng, FRAMES), 10)
        r = ew * 1.45
        width = max(1, int(u * 1.2))
        for side in (-1, 1):
            ex = cx + side * spacing
            box = [ex - r, eye_y - r * 0.85, ex + r, eye_y + r * 0.85]
            if rng.random() < 0.5:
                d.ellipse(box, outline=frame, width=width)
            else:
                d.rectangle(box, outline=frame, width=width)
        d.line([cx - spacing + r, eye_y, cx + spacing - r, eye_y], fill=frame, width=width)

    return np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.uint8)
