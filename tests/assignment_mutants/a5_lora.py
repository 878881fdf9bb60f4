"""Deliberately wrong solutions of assignment 5 (LoRA) and the test cells that must catch them.

Each mutant is the source solution with one answer cell edited (``_edit`` checks that the edited text is
really there, so a rewording of the solution cannot silently turn a mutant into the correct answer).
The generic runner (tests/test_grading.py) autogrades every mutant: the test cells in ``expect_fail`` must
score 0, every other test cell full points. The trained weights it grades come from the correct solution's
run, so ``test_trained_lora`` passes for all of them.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

SOURCE = Path(__file__).resolve().parents[2] / "solutions" / "a5_lora" / "a5_lora.ipynb"


def _cells() -> dict[str, str]:
    nb = nbformat.read(SOURCE, as_version=4)
    return {cell.metadata["nbgrader"]["grade_id"]: cell.source for cell in nb.cells
            if "grade_id" in cell.metadata.get("nbgrader", {})}


CELLS = _cells()


def _edit(grade_id: str, *changes: tuple[str, str]) -> dict[str, str]:
    """{grade_id: the cell's source with each (old, new) applied}; every ``old`` must occur exactly once."""
    source = CELLS[grade_id]
    for old, new in changes:
        count = source.count(old)
        if count != 1:
            raise AssertionError(f"mutant edit of {grade_id!r}: {old!r} occurs {count} times, expected once")
        source = source.replace(old, new)
    return {grade_id: source}


MUTANTS = [
    {   # the update without alpha / r, in forward and in delta_weight (hence in merge)
        "name": "scaling_missing",
        "replace": _edit("lora_linear",
                         ("return self.lora_B.weight @ self.lora_A.weight * self.scaling",
                          "return self.lora_B.weight @ self.lora_A.weight"),
                         ("return result + self.lora_B(self.lora_A(x)) * self.scaling",
                          "return result + self.lora_B(self.lora_A(x))")),
        "expect_fail": ["test_lora_forward", "test_merge_unmerge", "test_export"],
    },
    {   # B random at init: the model changes before any training
        "name": "b_random_init",
        "replace": _edit("lora_linear",
                         ("nn.init.zeros_(self.lora_B.weight)",
                          "nn.init.kaiming_uniform_(self.lora_B.weight, a=math.sqrt(5), generator=generator)")),
        "expect_fail": ["test_lora_init", "test_inject"],
    },
    {   # merge adds (B A)^T: a shape error for d != k, silently wrong for square layers
        "name": "merge_transposed",
        "replace": _edit("lora_linear",
                         ("self.base_layer.weight += self.delta_weight()",
                          "self.base_layer.weight += self.delta_weight().T")),
        "expect_fail": ["test_merge_unmerge", "test_export"],
    },
    {   # merge (and unmerge) add B A without alpha / r, while forward scales: merged != unmerged
        "name": "merge_forgets_scaling",
        "replace": _edit("lora_linear",
                         ("self.base_layer.weight += self.delta_weight()",
                          "self.base_layer.weight += self.lora_B.weight @ self.lora_A.weight"),
                         ("self.base_layer.weight -= self.delta_weight()",
                          "self.base_layer.weight -= self.lora_B.weight @ self.lora_A.weight")),
        "expect_fail": ["test_merge_unmerge", "test_export"],
    },
    {   # matching on the last name component only: "to_out.0" ends in "0" and is never wrapped
        "name": "inject_misses_to_out",
        "replace": _edit("inject_lora",
                         ('if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) '
                          'for t in target_modules)]',
                          'if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]')),
        "expect_fail": ["test_inject", "test_counts", "test_sd15_count", "test_export"],
    },
    {   # no lora_adapter_metadata: diffusers then assumes lora_alpha = r and loads the wrong strength
        "name": "export_without_alpha",
        "replace": _edit("save_lora_weights",
                         ('metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)}',
                          'metadata={"format": "pt"}')),
        "expect_fail": ["test_export"],
    },
    {   # the loss compares the prediction with z_0 instead of the noise eps
        "name": "loss_target_latent",
        "replace": _edit("train_lora_steps",
                         ("loss = F.mse_loss(unet(z_t, t, c).sample, noise)",
                          "loss = F.mse_loss(unet(z_t, t, c).sample, z0)")),
        "expect_fail": ["test_training_step"],
    },
]
