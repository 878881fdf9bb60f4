"""What the grader does to a submitted notebook around the student's code: repairs, guards, limits.

nbgrader autogrades in two passes over each notebook, and this module adds preprocessors to both:

    sanitize pass   ClearOutput -> RebuildFromSource -> DeduplicateIds -> OverwriteKernelspec -> OverwriteCells
                    -> CheckCellMetadata
    autograde pass  InjectGuard -> InjectProbes -> Execute -> ApplyVerdicts -> ReviewOutputs -> IgnorePattern
                    -> ClearMetadata -> LimitOutput -> SaveAutoGrades -> RestoreStderr -> AssignLatePenalties
                    -> CheckCellMetadata

Glossary:
    source cell     a cell of the instructor's source notebook that carries nbgrader metadata (grade_id)
    fixed cell      a test cell or a read-only (locked) cell: always taken from the gradebook, never the student
    answer cell     a solution cell: the student's code, from the student's FIRST cell with that grade_id
    student cell    any other cell of the submission (prose, scratch code): kept where the student put it
    guard           code injected around every test cell: it restores comparison functions, builtins, imported
                    names and IPython hooks snapshotted before any student code ran, and fails the test if the
                    student's code replaces them while the test runs
    policy          per answer: the library pieces it must not merely call (``POLICIES`` below, or
                    ``metadata.course_grading`` of the answer cell in the source notebook)

What each hostile submission gets (the README's instructor section has the same table):
    edited / deleted / duplicated test cell     restored from the gradebook, graded normally, noted
    answer cell duplicated                      the first copy is graded, later copies dropped, noted
    cell type or nbgrader metadata changed      rebuilt from the source, noted
    unknown nbgrader metadata (fake grade cell) removed: an ordinary cell, noted
    submitted outputs or outputs "claiming" points  cleared (ClearOutput); a score-like result produced while a
                                                test runs is shown but never scored (tests are all-or-nothing)
    stderr while a test runs (warnings, logging)  shown, not penalised: only an exception fails a test
    huge outputs at grading time                output capped per cell and per notebook, said in the cell
    extra files (.py/.pyc/.so that could shadow a module, files over the size limit, other notebooks)
                                                left out of the grading folder (``submission_config``), noted
    monkeypatched comparisons                   restored before each test (guard), noted; a patch made while
                                                a test runs fails that test
    an answer that calls the library piece it should implement   its tests get no credit, noted

The guard runs inside the student's kernel, so it cannot stop an attack aimed at the guard itself (code that
finds and disables it); such code is flagged by the static scan (``tampering`` notes) for a human to read. The
guard is not what protects the points: ``course_lib.grading.verdicts`` checks every test's answer in the grading
worker, on new inputs, where the student's code cannot reach (docs/grading_security.md).
"""
from __future__ import annotations

import ast
import copy
import glob
import json
import re
import secrets
from pathlib import Path

from nbformat import NotebookNode, from_dict
from traitlets import Dict, Integer, List, Unicode
from traitlets.config import Config

from nbgrader.preprocessors import NbGraderPreprocessor

from course_lib.grading.verdicts import CHECKS_FILE, ApplyVerdicts, InjectProbes

__all__ = ["autograde_config", "submission_config", "findings", "screen_files", "POLICIES", "LIMITS",
           "RebuildFromSource", "InjectGuard", "ReviewOutputs", "RestoreStderr", "scan_cells"]

NOTES_FILE = "grading_notes.json"  # written into autograded/<student>/<assignment>/ after the kernel is gone
META = "course_grading"            # notebook/cell metadata key used between the two passes (never sent to the kernel)

LIMITS = {
    "cell_output_bytes": 200_000,       # outputs of one cell (text, images) beyond this are replaced by a notice
    "notebook_output_bytes": 2_000_000,  # outputs of the whole notebook
    "stream_chars": 50_000,             # printed text per cell (LimitOutput also keeps at most 1000 lines)
    "markdown_bytes": 100_000,          # source + attachments of one student markdown/raw cell
}

# Files a submission may not bring into the grading folder: Python would import them instead of the real
# module (the kernel's working directory comes first on sys.path): torch.py, numpy.py, course_lib/__init__.py...
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth")

# Per assignment: answer grade_id -> the tests that grade it and the library pieces it must not merely call.
# A source notebook can declare the same on an answer cell: metadata {"course_grading": {"tests": [...],
# "forbidden": [...]}} (it wins over this table). Names are dotted paths; see ``_uses`` for what counts as a use.
_DIFFUSERS_GAUSSIAN = "diffusers.models.autoencoders.vae.DiagonalGaussianDistribution"
_SD_UNET = "course_lib.models.unet_2d_condition"
POLICIES = {
    "a1_vae": {
        "reparameterize": {"tests": ["test_reparameterize"],
                           "forbidden": ["course_lib.vae.DiagonalGaussian", _DIFFUSERS_GAUSSIAN]},
        "kl_divergence": {"tests": ["test_kl_divergence"],
                          "forbidden": ["course_lib.vae.kl_divergence", "course_lib.vae.DiagonalGaussian",
                                        _DIFFUSERS_GAUSSIAN]},
        "negative_elbo": {"tests": ["test_negative_elbo"], "forbidden": ["course_lib.vae.vae_loss"]},
    },
    "a2_attention": {
        "scaled_dot_product_attention": {
            "tests": ["test_attention", "test_attention_mask"],
            "forbidden": ["course_lib.attention.scaled_dot_product_attention",
                          "torch.nn.functional.scaled_dot_product_attention"]},
        "multi_head_attention": {"tests": ["test_multi_head_attention"],
                                 "forbidden": ["course_lib.attention.MultiHeadAttention"]},
    },
    "a3_ddpm": {
        "make_betas": {"tests": ["test_make_betas"],
                       "forbidden": ["course_lib.schedulers.make_betas", "diffusers.DDPMScheduler",
                                     "diffusers.DDIMScheduler"]},
        "q_sample": {"tests": ["test_q_sample"],
                     "forbidden": ["course_lib.schedulers.DDPMScheduler", "diffusers.DDPMScheduler"]},
        "ddpm_step": {"tests": ["test_ddpm_step"],
                      "forbidden": ["course_lib.schedulers.DDPMScheduler", "diffusers.DDPMScheduler"]},
        "ddim_step": {"tests": ["test_ddim_step"],
                      "forbidden": ["course_lib.schedulers.DDIMScheduler", "diffusers.DDIMScheduler"]},
    },
    "a4_latent_diffusion": {
        "clip_loss": {"tests": ["test_clip_loss"],
                      "forbidden": ["course_lib.text.contrastive_loss", "course_lib.text.TinyCLIP"]},
        "zero_shot_classify": {"tests": ["test_zero_shot_classify"],
                               "forbidden": ["course_lib.text.zero_shot_classify"]},
        "drop_condition": {"tests": ["test_drop_condition"],
                           "forbidden": ["course_lib.guidance.drop_condition", "course_lib.guidance.sample_keep_mask",
                                         "course_lib.guidance.apply_keep_mask"]},
        "cfg_combine": {"tests": ["test_cfg_combine"], "forbidden": ["course_lib.guidance.cfg_combine"]},
        "generate": {"tests": ["test_generate"],
                     "forbidden": ["course_lib.guidance.cfg_combine", "course_lib.demo.generate_for_prompts"]},
        "img2img_timesteps": {"tests": ["test_img2img_timesteps"],
                              "forbidden": ["course_lib.schedulers.get_timesteps_for_strength"]},
    },
    "a5_lora": {
        "lora_linear": {"tests": ["test_lora_init", "test_lora_forward", "test_merge_unmerge"],
                        "forbidden": ["course_lib.lora.LoRALinear", "peft.tuners.lora.Linear",
                                      "peft.tuners.lora.LoraLayer"]},
        "inject_lora": {"tests": ["test_inject"],
                        "forbidden": ["course_lib.lora.inject_lora", "peft.get_peft_model",
                                      "peft.inject_adapter_in_model"]},
        "counts": {"tests": ["test_counts"],
                   "forbidden": ["course_lib.lora.lora_parameter_count", "course_lib.lora.count_trainable_parameters"]},
        "save_lora_weights": {"tests": ["test_export"], "forbidden": ["course_lib.lora.save_lora"]},
    },
    "a6_unet": {
        "timestep": {"tests": ["test_timestep"],
                     "forbidden": [_SD_UNET + ".timestep_embedding", _SD_UNET + ".TimestepEmbedding",
                                   "diffusers.models.embeddings"]},
        "resnet": {"tests": ["test_resnet"], "forbidden": [_SD_UNET + ".ResnetBlock2D", "diffusers.models.resnet"]},
        "attention": {"tests": ["test_attention"],
                      "forbidden": [_SD_UNET + ".Attention", "diffusers.models.attention_processor",
                                    "torch.nn.MultiheadAttention"]},
        "transformer_block": {"tests": ["test_transformer_block"],
                              "forbidden": [_SD_UNET + ".BasicTransformerBlock", _SD_UNET + ".FeedForward",
                                            _SD_UNET + ".GEGLU", "diffusers.models.attention",
                                            "diffusers.models.activations"]},
        "spatial_transformer": {"tests": ["test_spatial_transformer"],
                                "forbidden": [_SD_UNET + ".Transformer2DModel", "diffusers.Transformer2DModel",
                                              "diffusers.models.transformers"]},
        "unet": {"tests": ["test_unet_names", "test_unet_matches_diffusers", "test_trained_denoises",
                           "test_trained_reads_prompt"],
                 "forbidden": [_SD_UNET + ".UNet2DConditionModel", _SD_UNET + ".DownBlock2D", _SD_UNET + ".UpBlock2D",
                               _SD_UNET + ".UNetMidBlock2DCrossAttn", "diffusers.UNet2DConditionModel",
                               "diffusers.models.unets", "course_lib.unet.UNet"]},
    },
    "a7_clip_text": {
        "pad_tokens": {"tests": ["test_pad_tokens"],
                       "forbidden": ["transformers.CLIPTokenizer", "transformers.CLIPTokenizerFast",
                                     "transformers.AutoTokenizer"]},
        "embeddings": {"tests": ["test_embeddings"],
                       "forbidden": ["course_lib.models.clip_text.CLIPTextEmbeddings", "transformers.models.clip"]},
        "attention": {"tests": ["test_attention"],
                      "forbidden": ["course_lib.models.clip_text.CLIPAttention", "course_lib.models.clip_text.causal_mask",
                                    "torch.nn.MultiheadAttention", "transformers.models.clip"]},
        "encoder_layer": {"tests": ["test_encoder_layer"],
                          "forbidden": ["course_lib.models.clip_text.CLIPEncoderLayer", "course_lib.models.clip_text.CLIPMLP",
                                        "course_lib.models.clip_text.quick_gelu", "torch.nn.TransformerEncoderLayer",
                                        "transformers.models.clip", "transformers.activations"]},
        "text_model": {"tests": ["test_last_hidden_state", "test_pooled"],
                       "forbidden": ["course_lib.models.clip_text.CLIPTextModel", "course_lib.models.clip_text.pooled_positions",
                                     "transformers.CLIPTextModel", "transformers.models.clip"]},
    },
}

# Modules whose functions the guard snapshots when the source notebook imports them (plus these three always).
GUARDED_PACKAGES = ("torch", "numpy", "math", "cmath", "operator", "einops", "safetensors")
ALWAYS_GUARDED = ("builtins", "math", "operator")
# Builtins a test relies on: a global of the same name defined by the student is removed before each test.
GUARDED_BUILTINS = ("abs", "all", "any", "bool", "callable", "dict", "enumerate", "float", "getattr", "hasattr",
                    "int", "isinstance", "issubclass", "len", "list", "max", "min", "print", "range", "repr",
                    "round", "set", "sorted", "str", "sum", "tuple", "type", "zip", "AssertionError",
                    "Exception")
IPYTHON_HOOKS = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers", "set_custom_exc",
                 "register_magic_function", "displayhook", "display_pub", "events", "showtraceback",
                 "excepthook", "run_cell", "user_expressions")


# ----------------------------------------------------------------------------------------- entry points

def _check(course, assignment: str, student: str | None = None) -> None:
    from course_lib.grading.course import Course, check_student_id

    if not isinstance(course, Course):
        raise ValueError(f"course must be a course_lib.grading.Course, got {type(course).__name__}")
    course.check_assignment(assignment)
    if student is not None:
        check_student_id(student)


def autograde_config(course, assignment: str) -> Config:
    """A traitlets Config fragment for the autograde API: this module's preprocessors in both passes."""
    from nbgrader.converters import Autograde

    _check(course, assignment)
    source = _source_notebooks(course, assignment)
    sanitize = list(Autograde.class_traits()["sanitize_preprocessors"].default())
    sanitize.insert(_index_of(sanitize, "ClearOutput") + 1, RebuildFromSource)
    autograde = list(Autograde.class_traits()["autograde_preprocessors"].default())
    execute = _index_of(autograde, "Execute")
    autograde[execute:execute + 1] = [InjectGuard, InjectProbes, autograde[execute], ApplyVerdicts, ReviewOutputs]
    autograde.insert(_index_of(autograde, "SaveAutoGrades") + 1, RestoreStderr)
    c = Config()
    c.Autograde.sanitize_preprocessors = sanitize
    c.Autograde.autograde_preprocessors = autograde
    c.RebuildFromSource.source_dir = str(course.source_dir / assignment)
    c.RebuildFromSource.policy = _policy(assignment, source)
    c.RebuildFromSource.markdown_bytes = LIMITS["markdown_bytes"]
    c.InjectGuard.packages = sorted(_guarded_packages(source))
    c.InjectGuard.aliases = _import_aliases(source)
    c.ReviewOutputs.autograded_dir = str(course.autograded_dir)
    c.InjectProbes.checks_file = str(course.source_dir / assignment / CHECKS_FILE)
    c.InjectProbes.autograded_dir = str(course.autograded_dir)
    c.ApplyVerdicts.submitted_dir = str(course.submitted_dir)
    c.ReviewOutputs.cell_output_bytes = LIMITS["cell_output_bytes"]
    c.ReviewOutputs.notebook_output_bytes = LIMITS["notebook_output_bytes"]
    c.ReviewOutputs.stream_chars = LIMITS["stream_chars"]
    return c


def submission_config(course, assignment: str, student: str) -> Config:
    """Config for one submission: the files ``screen_files`` rejects are left out of the grading folder."""
    _check(course, assignment, student)
    folder = course.submission_dir(student, assignment)
    rejected = [glob.escape(str(folder / name)) for name, _ in screen_files(course, assignment, student)]
    c = Config()
    # absolute globs: nbgrader joins each pattern to the folder it scans, which keeps them as is; the grader's
    # checks (solutions/<a>/checks.py) never go next to a submission, whatever nbgrader_config.py says
    c.CourseDirectory.ignore = list(course.config().CourseDirectory.ignore) + rejected + [CHECKS_FILE]
    return c


def screen_files(course, assignment: str, student: str) -> list[tuple[str, str]]:
    """(relative path, reason) of every extra file of a submission that must not reach the grading folder."""
    _check(course, assignment, student)
    folder = course.submission_dir(student, assignment)
    if not folder.is_dir():
        return []
    notebooks = {p.name for p in (course.source_dir / assignment).glob("*.ipynb")}
    max_bytes = 1000 * int(course.config().CourseDirectory.get("max_file_size", 100_000))
    rejected = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        name = str(path.relative_to(folder))
        if name in notebooks:
            continue
        if path.is_symlink():
            rejected.append((name, "a link"))
        elif path.suffix.lower() in CODE_SUFFIXES or path.name.lower().endswith(CODE_SUFFIXES):
            rejected.append((name, "code next to the notebook could shadow an imported module"))
        elif path.suffix.lower() == ".ipynb":
            rejected.append((name, "not this assignment's notebook"))
        elif path.stat().st_size > max_bytes:
            rejected.append((name, f"{path.stat().st_size / 1e6:.0f} MB is over the {max_bytes / 1e6:.0f} MB limit"))
    return rejected


def findings(course, assignment: str, student: str) -> list[str]:
    """Short notes on what the sanitiser found in this submission (empty when nothing was wrong)."""
    _check(course, assignment, student)
    notes = [f"file {name} left out: {reason}" for name, reason in screen_files(course, assignment, student)]
    path = course.autograded_dir / student / assignment / NOTES_FILE
    if path.is_file():
        for notebook, per in sorted(json.loads(path.read_text()).items()):
            notes += per if len(_source_notebooks(course, assignment)) == 1 else [f"{notebook}: {n}" for n in per]
    return notes


# --------------------------------------------------------------------------------- reading the source

def _index_of(preprocessors: list, name: str) -> int:
    return [p.__name__ if isinstance(p, type) else str(p) for p in preprocessors].index(name)


def _source_notebooks(course, assignment: str) -> list[NotebookNode]:
    import nbformat

    return [nbformat.read(str(p), as_version=4) for p in sorted((course.source_dir / assignment).glob("*.ipynb"))]


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def _policy(assignment: str, notebooks: list) -> dict:
    policy = copy.deepcopy(POLICIES.get(assignment, {}))
    for nb in notebooks:
        for cell in nb.cells:
            declared = cell.get("metadata", {}).get(META)
            if isinstance(declared, dict) and _nbgrader(cell).get("solution"):
                policy[_nbgrader(cell)["grade_id"]] = {"tests": list(declared.get("tests", [])),
                                                       "forbidden": list(declared.get("forbidden", []))}
    return policy


def _python(source: str) -> ast.Module | None:
    """A cell's code as a Python syntax tree (IPython magics and shell escapes removed), None if it is not valid."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except (SyntaxError, ValueError):
        return None


def _import_aliases(notebooks: list) -> dict[str, str]:
    """Names bound by import statements anywhere in the source notebook(s): name -> dotted path."""
    aliases = {}
    for nb in notebooks:
        for cell in nb.cells:
            tree = _python(cell.source) if cell.cell_type == "code" else None
            for node in ast.walk(tree) if tree else []:
                if isinstance(node, ast.Import):
                    for a in node.names:
                        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names if a.name != "*"})
    return aliases


def _guarded_packages(notebooks: list) -> set[str]:
    imported = {path.split(".")[0] for path in _import_aliases(notebooks).values()}
    return set(ALWAYS_GUARDED) | (imported & set(GUARDED_PACKAGES))


# ------------------------------------------------------------------------- static scan of student code

class _References(ast.NodeVisitor):
    """Dotted names a piece of code refers to through its imports, and the module attributes it overwrites."""

    def __init__(self):
        self.aliases: dict[str, str] = {}  # shared across the cells of one notebook (they share a namespace)
        self.uses: set[tuple[str, bool]] = set()  # (dotted name, reached dynamically: getattr, strings, *)
        self.patches: set[str] = set()
        self.counting = True  # False while reading the instructor's cells: their imports count, their uses not

    def use(self, name: str, dynamic: bool):
        if self.counting:
            self.uses.add((name, dynamic))

    def patch(self, what: str):
        if self.counting:
            self.patches.add(what)

    def dotted(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Import(self, node):
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            self.use(a.name, False)

    def visit_ImportFrom(self, node):
        if not node.module or node.level:
            return
        for a in node.names:
            if a.name == "*":
                self.use(node.module, True)
            else:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                self.use(f"{node.module}.{a.name}", False)

    def visit_Assign(self, node):
        self.generic_visit(node)
        value = self.dotted(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name) and value:
                self.aliases[target.id] = value  # v = course_lib.vae
            self._patched(target)

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        self._patched(node.target)

    def visit_Delete(self, node):
        self.generic_visit(node)
        for target in node.targets:
            self._patched(target)

    def _patched(self, target):
        if isinstance(target, ast.Attribute) and self.dotted(target.value):
            self.patch(f"{self.dotted(target.value)}.{target.attr}")
        elif isinstance(target, ast.Attribute) and target.attr in IPYTHON_HOOKS:
            self.patch(f"IPython {target.attr}")
        elif isinstance(target, ast.Subscript) and self.dotted(target.value) in ("sys.modules", "builtins.__dict__"):
            self.patch(f"{self.dotted(target.value)}[...]")
        elif isinstance(target, ast.Name) and target.id == "__builtins__":
            self.patch("__builtins__")

    def visit_Attribute(self, node):
        name = self.dotted(node)
        if name:
            self.use(name, node.attr in ("__dict__",))
        if node.attr in IPYTHON_HOOKS[:5] or node.attr == "__code__":
            self.patch(f"IPython {node.attr}" if node.attr != "__code__" else "a function's __code__")
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in self.aliases:
            self.use(self.aliases[node.id], False)
        if node.id == "__builtins__":
            self.patch("__builtins__")

    def visit_Call(self, node):
        func = node.func.id if isinstance(node.func, ast.Name) else None
        first = self.dotted(node.args[0]) if node.args else None
        if func in ("getattr", "vars", "dir") and first:
            self.use(first, True)
        if func in ("setattr", "delattr") and node.args and (first or _is_builtins(node.args[0])):
            self.patch(f"setattr on {first or 'builtins'}")
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", node.value):
            self.use(node.value, True)  # importlib.import_module("course_lib.vae"), __import__(...)


def _is_builtins(node) -> bool:
    return isinstance(node, ast.Name) and node.id in ("builtins", "__builtins__")


def _uses(reference: tuple[str, bool], forbidden: str) -> bool:
    """Does a reference reach the forbidden dotted name?

    yes if it is that name or something inside it; if it reaches the name's own module dynamically (getattr,
    vars, a string, a star import); or if it names an object of the same package with the same final name
    (a re-export such as course_lib.kl_divergence for course_lib.vae.kl_divergence).
    """
    name, dynamic = reference
    if name == forbidden or name.startswith(forbidden + "."):
        return True
    if dynamic and forbidden.rsplit(".", 1)[0] == name:
        return True
    return name.split(".")[0] == forbidden.split(".")[0] and name.rsplit(".", 1)[-1] == forbidden.rsplit(".", 1)[-1]


def scan_cells(cells: list[tuple[str, bool]], policy: dict) -> tuple[dict[str, str], list[str]]:
    """Static scan of a notebook's code cells, in order: (source, written by the student?) pairs.

    Returns ({answer grade_id: why it gets no credit}, [tampering notes]). Every student cell counts, not only
    the answer's own cell: a helper cell can wire the library piece into the answer just as well. The
    instructor's cells only contribute the names they import (``F`` for torch.nn.functional, ...).
    """
    if not isinstance(cells, list) or not all(isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str)
                                              and isinstance(c[1], bool) for c in cells):
        raise ValueError(f"cells must be a list of (source, by_student) pairs, got {cells!r:.80}")
    if not isinstance(policy, dict) or not all(isinstance(r, dict) and isinstance(r.get("forbidden", []), list)
                                               for r in policy.values()):
        raise ValueError(f"policy must map answer ids to {{'tests': [...], 'forbidden': [...]}}, got {policy!r:.80}")
    visitor = _References()
    for source, by_student in cells:
        tree = _python(source)
        if tree is not None:  # a cell that does not parse does not run either
            visitor.counting = by_student
            visitor.visit(tree)
    banned = {}
    for answer, rule in sorted(policy.items()):
        hits = sorted({f for f in rule.get("forbidden", []) for ref in visitor.uses if _uses(ref, f)})
        if hits:
            banned[answer] = f"{answer} uses {', '.join(hits)}, the piece it should implement"
    tampering = [f"tampering in the submission's code: {', '.join(sorted(visitor.patches))} "
                 f"(originals are restored before every test)"] if visitor.patches else []
    return banned, tampering


# ------------------------------------------------------------------------- sanitize pass: the structure

def _hidden_tests_removed(source: str) -> str:
    return re.sub(r"[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*\n?", "", source, flags=re.S)


def _same_text(a: str, b: str) -> bool:
    def norm(s):
        return [line.rstrip() for line in s.strip().splitlines() if line.strip()]
    return norm(a) == norm(b)


class RebuildFromSource(NbGraderPreprocessor):
    """Rebuild the submitted notebook's structure from the source notebook and the gradebook.

    Fixed cells (tests, read-only cells) come from the gradebook, at their source position; answer cells are the
    student's first cell with that grade_id (cell type and metadata from the source); every other cell of the
    submission stays where the student put it, after the nbgrader cell it followed. A missing fixed cell is put
    back after the cells that follow the previous nbgrader cell. Notes go into the notebook's metadata.
    """

    source_dir = Unicode("", help="folder of the assignment's source notebook(s)").tag(config=True)
    policy = Dict({}, help="answer grade_id -> {'tests': [...], 'forbidden': [...]}").tag(config=True)
    markdown_bytes = Integer(100_000, help="largest student markdown/raw cell (source + attachments)").tag(config=True)

    def preprocess(self, nb, resources):
        import nbformat
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        source_nb = nbformat.read(str(Path(self.source_dir) / f"{info['notebook']}.ipynb"), as_version=4)
        with Gradebook(info["db_url"]) as gb:
            stored = gb.find_notebook(info["notebook"], info["assignment"])
            gradebook = {c.name: {"source": c.source, "cell_type": c.cell_type, "checksum": c.checksum}
                         for c in stored.source_cells}
        order = [c for c in source_nb.cells if _nbgrader(c).get("grade_id") in gradebook]
        self.notes: list[str] = []
        anchors, groups = self._walk(nb.cells, {_nbgrader(c)["grade_id"]: c for c in order})
        cells = list(groups.get(None, []))
        used_ids = {c.get("id") for group in groups.values() for c in group}
        for source_cell in order:
            grade_id = _nbgrader(source_cell)["grade_id"]
            rebuilt = self._rebuild(nb, source_cell, gradebook[grade_id], anchors.get(grade_id), used_ids)
            cells += [rebuilt] if rebuilt is not None else []
            cells += groups.get(grade_id, [])
        nb.cells = cells
        instructors = {c.source for c in source_nb.cells if not _nbgrader(c)}
        code = [(c.source, not _is_fixed(c) and c.source not in instructors) for c in cells if c.cell_type == "code"]
        banned, tampering = scan_cells(code, self.policy)
        no_credit = {test: reason for answer, reason in banned.items()
                     for test in self.policy[answer].get("tests", [])}
        self.notes += tampering + [f"{reason}: no credit for {', '.join(self.policy[a]['tests'])}"
                                   for a, reason in banned.items()]
        nb.metadata[META] = {"notes": self.notes, "no_credit": no_credit}
        return nb, resources

    def _walk(self, cells, by_id):
        """Student cells grouped after the nbgrader cell they follow (None: before the first one)."""
        anchors, groups, current, seen = {}, {None: []}, None, {}
        for cell in cells:
            meta = cell.get("metadata", {}).get("nbgrader")
            grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
            if grade_id in by_id:
                seen[grade_id] = seen.get(grade_id, 0) + 1
                if grade_id in anchors:
                    continue  # a copy: dropped (noted below)
                anchors[grade_id], current = cell, grade_id
                groups[current] = []
                continue
            if meta is not None:
                what = f"nbgrader id {grade_id!r}" if grade_id else "nbgrader metadata"
                self.notes.append(f"a cell with {what} unknown to the assignment is graded as an ordinary cell")
                cell.metadata.pop("nbgrader")
            groups[current].append(self._trimmed(cell))
        self.notes += [f"cell {gid} appeared {n} times: the first copy is kept" for gid, n in seen.items() if n > 1]
        return anchors, groups

    def _trimmed(self, cell):
        if cell.cell_type == "code":
            return cell
        size = len(cell.source.encode()) + len(json.dumps(cell.get("attachments", {})))
        if size > self.markdown_bytes:
            cell.pop("attachments", None)
            kept = cell.source[: self.markdown_bytes // 2].replace("attachment:", "removed-attachment:")
            cell.source = kept + "\n\n*[cut by the grader: cell too large]*"
            self.notes.append(f"a {cell.cell_type} cell of {size / 1e6:.1f} MB was cut")
        return cell

    def _rebuild(self, nb, source_cell, stored: dict, student, used_ids: set):
        meta = _nbgrader(source_cell)
        grade_id, answer = meta["grade_id"], bool(meta.get("solution"))
        kind = "answer cell" if answer else ("test cell" if meta.get("grade") else "read-only cell")
        if student is None:
            self.notes.append(f"{kind} {grade_id} was missing" + ("" if answer else ": restored"))
            if answer:
                return None  # its tests grade whatever the notebook defines
        else:
            self._compare(kind, grade_id, meta, stored, student)
        cell_id = (student.get("id") if answer and student is not None else None) or source_cell.get("id") or grade_id
        if cell_id in used_ids:
            cell_id = f"{grade_id}-{secrets.token_hex(4)}"
        used_ids.add(cell_id)
        metadata = copy.deepcopy(dict(source_cell.metadata))
        metadata.pop(META, None)
        return _new_cell(nb, stored["cell_type"], student.source if answer else stored["source"], cell_id, metadata)

    def _compare(self, kind, grade_id, meta, stored, student):
        if student.cell_type != stored["cell_type"]:
            self.notes.append(f"{kind} {grade_id} was turned into {student.cell_type}: "
                              f"restored as {stored['cell_type']}")
        theirs = _nbgrader(student)
        flags = [k for k in ("grade", "solution", "locked", "points")
                 if bool(theirs.get(k)) != bool(meta.get(k)) or (k == "points" and theirs.get(k) != meta.get(k))]
        if flags:
            self.notes.append(f"nbgrader metadata of {grade_id} was altered ({', '.join(flags)}): restored")
        released = _hidden_tests_removed(stored["source"])
        if kind != "answer cell" and not any(_same_text(student.source, s) for s in (released, stored["source"])):
            self.notes.append(f"{kind} {grade_id} was edited: restored")


def _is_fixed(cell) -> bool:
    meta = _nbgrader(cell)
    return bool(meta) and not meta.get("solution") and bool(meta.get("grade") or meta.get("locked"))


def _is_test(cell) -> bool:
    meta = _nbgrader(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


# ------------------------------------------------------------------------------ autograde pass: guard

# Runs in the kernel, in a namespace of its own, before any student code: snapshots what the tests rely on and
# installs sys.<GUARD>(phase, test) which restores it (phase "before") or fails the test if it changed while
# the test ran (phase "after"). It reports on stdout lines starting with "[grader:<token>]", and "done" at the end.
_GUARD_CODE = r'''
import builtins, importlib, sys, types, warnings
from IPython import get_ipython

def _install(token, packages, aliases, builtin_names):
    ip, missing = get_ipython(), object()
    volatile = {"builtins.input", "builtins.raw_input"}  # ipykernel swaps these for every request
    out = sys.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in packages:
            try:
                importlib.import_module(name)
            except Exception:
                pass
        prefixes = tuple(p + "." for p in packages)
        modules = {n: m for n, m in list(sys.modules.items())
                   if isinstance(m, types.ModuleType) and (n in packages or n.startswith(prefixes))}
        kept = {n: {k: v for k, v in vars(m).items() if (isinstance(v, (types.ModuleType, type)) or callable(v))
                    and f"{n}.{k}" not in volatile} for n, m in modules.items()}
    functions = [(f, f.__code__, f.__defaults__, f.__kwdefaults__) for d in kept.values() for f in d.values()
                 if isinstance(f, types.FunctionType)]
    classes = {}
    for path in ("torch.Tensor", "torch.nn.Module"):
        mod, _, attr = path.rpartition(".")
        cls = getattr(modules.get(mod), attr, None)
        if isinstance(cls, type):
            classes[path] = (cls, dict(vars(cls)))
    originals = {}
    for alias, path in aliases.items():
        mod, _, attr = path.rpartition(".")
        if path in modules:
            originals[alias] = modules[path]
        elif mod in modules and attr in vars(modules[mod]):
            originals[alias] = vars(modules[mod])[attr]
    builtin = {n: vars(builtins)[n] for n in builtin_names if n in vars(builtins)}
    hooks = {n: list(getattr(ip, n)) for n in ("input_transformers_cleanup", "input_transformers_post",
                                                "ast_transformers")}
    system = {k: getattr(sys, k) for k in ("stdout", "stderr", "displayhook")}
    shell = {"custom_exceptions": ip.custom_exceptions, "CustomTB": getattr(ip, "CustomTB", None)}

    import sysconfig
    libraries = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})

    def wraps_original(new, old):
        """A library's own wrapper of the original (torch._dynamo wraps torch.manual_seed): not the student's."""
        if not isinstance(new, types.FunctionType) or not new.__code__.co_filename.startswith(libraries):
            return False
        for _ in range(5):
            new = getattr(new, "__wrapped__", None)
            if new is old:
                return True
        return False

    def restore():
        changed = []
        for n, m in modules.items():
            if sys.modules.get(n) is not m:
                changed.append(f"sys.modules[{n!r}]")
                sys.modules[n] = m
            d = vars(m)
            for k, v in kept[n].items():
                now = d.get(k, missing)
                if now is v:
                    continue
                if wraps_original(now, v):
                    kept[n][k] = now
                    continue
                changed.append(f"{n}.{k}")
                d[k] = v
        for f, code, defaults, kwdefaults in functions:
            if f.__code__ is not code or f.__defaults__ is not defaults or f.__kwdefaults__ is not kwdefaults:
                changed.append(f"{f.__module__}.{f.__qualname__} (code)")
                f.__code__, f.__defaults__, f.__kwdefaults__ = code, defaults, kwdefaults
        for path, (cls, attrs) in classes.items():
            now = dict(vars(cls))
            for k in set(now) | set(attrs):
                new, old = now.get(k, missing), attrs.get(k, missing)
                if new is old:
                    continue
                inherited = any(k in vars(base) for base in cls.__mro__[1:])
                if (old is missing and not inherited) or (new is not missing and wraps_original(new, old)):
                    attrs[k] = new  # a new method that shadows nothing (a library's helper), or a library wrapper
                    continue
                changed.append(f"{path}.{k}")
                if old is missing:
                    delattr(cls, k)
                else:
                    setattr(cls, k, old)
        ns = ip.user_ns
        for alias, obj in originals.items():
            if alias in ns and ns[alias] is not obj:
                changed.append(f"the name {alias}")
                ns[alias] = obj
        for n, obj in builtin.items():
            if n in ns and ns[n] is not obj:
                changed.append(f"the name {n} (a builtin)")
                del ns[n]
        for n, obj in list(builtin.items()):
            if vars(builtins).get(n, missing) is not obj:
                changed.append(f"builtins.{n}")
                vars(builtins)[n] = obj
        for n, value in hooks.items():
            if list(getattr(ip, n)) != value:
                changed.append(f"IPython {n}")
                getattr(ip, n)[:] = value
        for k, value in system.items():
            if getattr(sys, k) is not value:
                changed.append(f"sys.{k}")
                setattr(sys, k, value)
        for k, value in shell.items():
            if getattr(ip, k, None) is not value:
                changed.append(f"IPython {k}")
                setattr(ip, k, value)
        return changed

    def guard(phase, test):
        changed = sorted(set(restore()))
        if phase == "before":
            if changed:
                out.write(f"[grader:{token}] restored {', '.join(changed)}\n")
        else:
            if changed:
                out.write(f"[grader:{token}] during {', '.join(changed)}\n")
                out.flush()
                raise AssertionError(f"the submission replaced {', '.join(changed[:5])} while test {test} ran: "
                                     "the test does not count")
            out.write(f"[grader:{token}] done {test}\n")
        out.flush()

    setattr(sys, "_grader_" + token, guard)
'''


class InjectGuard(NbGraderPreprocessor):
    """Before execution: a first cell that snapshots the originals; before every test cell a guard cell that
    restores them; at the end of every test cell a guard call that fails the test if they changed meanwhile.

    The guard cells are removed after execution, the test's own source is kept in its metadata (the kernel never
    sees metadata) and put back by ``ReviewOutputs``: the saved notebook shows the instructor's test exactly,
    and the test's line numbers in tracebacks are its own.
    """

    packages = List(Unicode(), list(ALWAYS_GUARDED), help="packages whose functions are snapshotted").tag(config=True)
    aliases = Dict({}, help="name -> dotted path of the source notebook's imports").tag(config=True)

    def preprocess(self, nb, resources):
        token = secrets.token_hex(8)
        args = ", ".join(repr(x) for x in (token, tuple(self.packages), dict(self.aliases), GUARDED_BUILTINS))
        setup = f"exec({_GUARD_CODE + f'_install({args})'!r}, {{'__name__': '_grader'}})"
        call = f"__import__('sys')._grader_{token}"
        cells = [_new_cell(nb, "code", setup, f"grader-{token}", {META: {"guard": "setup"}})]
        for cell in nb.cells:
            if _is_test(cell) and not cell.source.lstrip().startswith("%%"):
                grade_id = _nbgrader(cell)["grade_id"]
                cells.append(_new_cell(nb, "code", f"{call}('before', {grade_id!r})", f"grader-{grade_id}-{token}",
                                       {META: {"guard": "before", "test": grade_id}}))
                cell.metadata[META] = {"source": cell.source}
                cell.source = f"{cell.source}\n{call}('after', {grade_id!r})"
            cells.append(cell)
        nb.cells = cells
        nb.metadata.setdefault(META, {})["token"] = token
        return nb, resources


# ---------------------------------------------------------------------- autograde pass: after execution

def _reports(outputs, token) -> list[str]:
    """The guard's report lines ("[grader:<token>] ...") in stream outputs, removed from them and returned."""
    marker, found = f"[grader:{token}] ", []
    for out in outputs:
        if token and out.get("output_type") == "stream":
            lines = out.text.splitlines(keepends=True)
            found += [line[len(marker):].strip() for line in lines if line.startswith(marker)]
            out.text = "".join(line for line in lines if not line.startswith(marker))
    return found


def _output_bytes(output) -> int:
    return len(json.dumps(output))


def _notice(text: str):
    return from_dict({"output_type": "stream", "name": "stdout", "text": f"[grader] {text}\n"})


def _error(ename: str, evalue: str):
    return from_dict({"output_type": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]})


class ReviewOutputs(NbGraderPreprocessor):
    """After execution, before scoring: read the guard's reports, apply the scoring rules, cap the outputs.

    Scoring rules for test cells (nbgrader scores a test 0 on an error or on stderr, partial on a number result):
      * an exception fails the test; text on stderr (warnings, logging) is shown as ordinary output, not penalised;
      * a result value produced while the test runs is shown but not scored (tests are all-or-nothing);
      * a test whose guard did not report the end of the cell fails (its code did not run as written);
      * the tests of an answer that uses the library piece it should implement fail with the reason.
    Then every cell's outputs are capped (per cell and per notebook); errors are always kept.
    """

    autograded_dir = Unicode("", help="where the notes file is written").tag(config=True)
    cell_output_bytes = Integer(200_000).tag(config=True)
    notebook_output_bytes = Integer(2_000_000).tag(config=True)
    stream_chars = Integer(50_000).tag(config=True)

    def preprocess(self, nb, resources):
        state = nb.metadata.pop(META, {})
        notes, token = list(state.get("notes", [])), state.get("token")
        no_credit = state.get("no_credit", {})
        reports, cells = {}, []
        for cell in nb.cells:  # the guard cells go; what they reported is kept for the test they precede
            guard = cell.get("metadata", {}).get(META, {}).get("guard") if cell.cell_type == "code" else None
            if guard is None:
                cells.append(cell)
                continue
            failed = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if failed and guard == "setup":
                notes.append(f"the grader's guard did not start: {failed[0].get('ename')}: {failed[0].get('evalue')}")
            reports[cell.metadata[META].get("test")] = _reports(cell.get("outputs", []), token)
        nb.cells = cells
        budget = [self.notebook_output_bytes]
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            if _is_test(cell):
                self._review_test(cell, token, reports.get(_nbgrader(cell)["grade_id"], []), no_credit, notes)
            self._cap(cell, budget, notes)
        if notes:
            text = "**Notes from the grader**\n\n" + "\n".join(f"- {n}" for n in _dedupe(notes))
            nb.cells.insert(0, _new_cell(nb, "markdown", text, f"grader-notes-{secrets.token_hex(4)}", {}))
        self._save_notes(resources, notes)
        return nb, resources

    def _review_test(self, cell, token, reports, no_credit, notes):
        grade_id = _nbgrader(cell)["grade_id"]
        original = cell.metadata.get(META, {}).pop("source", None)
        if original is not None:
            cell.source = original
        reports, outputs, stderr, result = reports + _reports(cell.outputs, token), [], False, False
        for out in cell.outputs:
            if out.output_type == "stream" and not out.text:
                continue  # it held only the guard's report
            if out.output_type == "stream" and out.name == "stderr":
                out.name, stderr = "stdout", True  # scored as stdout; RestoreStderr names it stderr again once scored
                out[META] = "stderr"  # in memory only: RestoreStderr removes it before the notebook is written
            elif out.output_type == "execute_result":
                out.output_type, result = "display_data", True
                out.pop("execution_count", None)
            elif out.output_type == "error" and token:  # the guard's line, where a traceback quotes it
                out.traceback = ["\n".join(l for l in entry.split("\n") if token not in l) for entry in out.traceback]
            outputs.append(out)
        cell.outputs = outputs
        errored = any(o.output_type == "error" for o in outputs)
        restored = [r[len("restored "):] for r in reports if r.startswith("restored ")]
        during = [r[len("during "):] for r in reports if r.startswith("during ")]
        if restored:
            notes.append(f"before {grade_id}, the grader restored what the submission replaced: {restored[0]}")
        if during:
            notes.append(f"{grade_id} failed: the submission replaced {during[0]} while it ran")
        if token and original is not None and not errored and f"done {grade_id}" not in reports:
            notes.append(f"{grade_id} failed: the test did not run to its end (the submission interfered)")
            cell.outputs.append(_error("GraderError", "this test did not run to its end; it does not count"))
        if stderr:
            notes.append(f"{grade_id} wrote to stderr (shown, not penalised)")
        if result:
            notes.append(f"{grade_id} produced a result value while it ran: shown, not scored")
        if grade_id in no_credit:
            cell.outputs.append(_error("NoCredit", no_credit[grade_id]))

    def _cap(self, cell, budget, notes):
        kept, used, dropped = [], 0, 0
        limit = min(self.cell_output_bytes, max(budget[0], 0))
        for out in cell.outputs:
            if out.output_type == "stream" and len(out.text) > self.stream_chars:
                dropped += len(out.text) - self.stream_chars
                out.text = out.text[: self.stream_chars] + "\n... [cut by the grader]\n"
            if out.output_type == "error":
                out.traceback = [line[:2000] for line in out.traceback[:200]]
                kept.append(out)  # never dropped: it decides the score
                continue
            size = _output_bytes(out)
            if used + size > limit:
                dropped += size
                continue
            kept.append(out)
            used += size
        if dropped:
            text = (f"output cut by the grader: {dropped / 1e6:.2f} MB more than the limit of "
                    f"{self.cell_output_bytes / 1e6:.1f} MB per cell and {self.notebook_output_bytes / 1e6:.1f} MB "
                    "per notebook")
            kept.insert(0, _notice(text))  # first: nbgrader's LimitOutput drops streams after 1000 lines
            notes.append(f"outputs of a cell were cut ({dropped / 1e6:.1f} MB over the limit)")
        cell.outputs = kept
        budget[0] -= sum(_output_bytes(o) for o in kept)

    def _save_notes(self, resources, notes):
        info = resources["nbgrader"]
        folder = Path(self.autograded_dir) / info["student"] / info["assignment"]
        # kept in this (worker) process and written whole: whatever a kernel wrote under this name is replaced
        saved = _SAVED_NOTES.setdefault(str(folder), {})
        saved[info["notebook"]] = _dedupe(notes)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / NOTES_FILE).write_text(json.dumps(saved, indent=1))


_SAVED_NOTES: dict[str, dict[str, list[str]]] = {}


def _new_cell(nb, cell_type: str, source: str, cell_id: str, metadata: dict):
    cell = from_dict({"cell_type": cell_type, "source": source, "metadata": metadata})
    if cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    if nb.get("nbformat_minor", 0) >= 5:  # cell ids exist from nbformat 4.5 on
        cell.id = cell_id
    return cell


class RestoreStderr(NbGraderPreprocessor):
    """After scoring: text a test cell wrote to stderr is saved as stderr again (shown as such in the feedback)."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            cell.metadata.pop(META, None)
            for out in cell.outputs:
                if out.pop(META, None) == "stderr":
                    out.name = "stderr"
        return cell, resources


def _dedupe(notes: list[str]) -> list[str]:
    """The same note once, and similar cut notes merged."""
    seen, out, cut = set(), [], 0
    for note in notes:
        if note.startswith("outputs of a cell were cut"):
            cut += 1
            continue
        if note not in seen:
            seen.add(note)
            out.append(note)
    if cut:
        out.append(f"outputs of {cut} cell(s) were cut to the size limits")
    return out
