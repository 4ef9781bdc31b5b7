"""Report text for a phantom: anatomy, view, every finding with its location, pertinent negatives.

Phrasing comes from a fixed template set chosen with a seeded generator, so the same seed gives the
same report. Every positive sentence contains the finding's grounding ``phrase`` verbatim, never
capitalised (the phrase its box is listed under), and every phrase contains the finding's name ("nodule",
"effusion", "fracture", "implant").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xr0_core.data.synthetic.findings import PlacedFinding

BODY_PART_NAMES = {
    "chest": "chest", "hand": "hand", "knee": "knee", "spine": "lumbar spine", "pelvis": "pelvis", "skull": "skull",
}
VIEW_NAMES = {"PA": "PA", "AP": "AP", "LAT": "lateral"}

_INTRO = (
    "{View} radiograph of the {part}.",
    "{View} view of the {part}.",
    "Single {view} view of the {part}.",
    "Radiograph of the {part}, {view} projection.",
)

_POSITIVE = {
    "nodule": ("A {size_mm} mm {phrase}.", "There is a {size_mm} mm {phrase}.", "Note is made of a {size_mm} mm {phrase}."),
    "effusion": ("Small {phrase} with blunting of the {location}.", "There is a {phrase} blunting the {location}.",
                 "Moderate {phrase}, with blunting of the {location}."),
    "fracture": ("There is a {phrase}.", "Acute {phrase}.", "A nondisplaced {phrase} is seen."),
    "implant": ("There is a {phrase}{kind_clause}.", "A {phrase} is noted{kind_clause}.",
                "Postoperative change: {phrase}{kind_clause}."),
}

_KIND_CLAUSE = {
    "pacemaker": ", consistent with a cardiac pacemaker",
    "hip": ", consistent with a hip arthroplasty",
    "rods": ", consistent with posterior spinal fusion",
    "plate": ", consistent with plate and screw fixation",
}

_NEGATIVE = {
    "nodule": ("No focal nodule.", "No suspicious pulmonary nodule."),
    "effusion": ("No pleural effusion.", "The costophrenic angles are sharp."),
    "fracture": ("No acute fracture.", "No fracture or dislocation.", "Bones are intact, no fracture."),
}

_NORMAL = {
    "chest": ("Heart size is normal.", "The cardiomediastinal silhouette is within normal limits."),
    "hand": ("Joint spaces are preserved.", "Normal bone mineralisation."),
    "knee": ("Joint space is preserved.", "No joint effusion."),
    "spine": ("Vertebral body heights are maintained.", "Alignment is normal."),
    "pelvis": ("Both hips are congruent.", "The sacroiliac joints are unremarkable."),
    "skull": ("The calvarium is intact.", "No focal lytic or sclerotic lesion."),
}


def write_report(
    anatomy: str,
    view: str,
    laterality: str | None,
    findings: Sequence[PlacedFinding],
    possible: Sequence[str],
    rng: np.random.Generator,
) -> str:
    """A few sentences: the examination, each positive finding, negatives for the absent possible ones.

    Parameters
    ----------
    anatomy, view : str
        Manifest anatomy and view (``PA``, ``AP``, ``LAT``).
    laterality : {"L", "R"} or None
        For paired body parts.
    findings : sequence of PlacedFinding
        What was drawn.
    possible : sequence of str
        Findings this anatomy can have: absent ones get a pertinent negative.
    rng : numpy.random.Generator
        Template choice.
    """
    part = BODY_PART_NAMES[anatomy]
    if laterality:
        part = f"{'left' if laterality == 'L' else 'right'} {part}"
    view_name = VIEW_NAMES[view]
    sentences = [_pick(rng, _INTRO).format(View=view_name[0].upper() + view_name[1:], view=view_name, part=part)]
    for finding in findings:
        template = _pick(rng, _POSITIVE[finding.name])
        sentences.append(template.format(
            phrase=finding.phrase, location=finding.location, size_mm=finding.details.get("size_mm", ""),
            kind_clause=_KIND_CLAUSE.get(finding.details.get("kind", ""), "") if rng.random() < 0.6 else "",
        ))
    present = {f.name for f in findings}
    for name in possible:
        if name not in present and name in _NEGATIVE:
            sentences.append(_pick(rng, _NEGATIVE[name]))
    if rng.random() < 0.6:
        sentences.append(_pick(rng, _NORMAL[anatomy]))
    if not present and rng.random() < 0.5:
        sentences.append("No acute abnormality.")
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]
