"""Imports point one way (issue 28): plumbing and embedded data at the bottom, then the metrics
(fid.py), the judges (judges.py), the model scripts, and on top the tools that import scripts
(evaluate.py, bench.py). Every import of every top-level module is read with `ast`, those inside
functions too, and the dynamic ones with a constant name (importlib.import_module, __import__,
evaluate.py's import_script)."""

import ast
import glob
import os
import re
import sys

import pytest

from conftest import REPO

# small helpers: they may import each other, nothing above
PLUMBING = {"common", "checkpoints", "image_io"}
SEVEN_SCRIPTS = {"dcgan_letters", "cdcgan_ab", "dcgan_cifar", "acgan_cifar", "wgan_gp_cifar",
                 "cdcgan_anime", "cgan_objects"}
# on top: they rebuild generators from the scripts; nothing imports them
TOOLS = {"evaluate", "bench"}
# what fid.py may use besides the plumbing: the network (torchvision, pytorch-fid),
# numbers, bars, pictures
FID_LIBRARIES = {"torch", "torchvision", "pytorch_fid", "numpy", "scipy", "tqdm", "PIL"}
DYNAMIC_IMPORTS = {"import_module", "__import__", "import_script"}


def modules():
    return {os.path.splitext(os.path.basename(p))[0]: p
            for p in sorted(glob.glob(os.path.join(REPO, "*.py")))}


def model_scripts():
    """Top-level modules that train a GAN (they define train_step): the seven and any copy
    (my_gan.py)."""
    found = set()
    for name, path in modules().items():
        with open(path, encoding="utf-8") as f:
            if re.search(r"^def train_step\(", f.read(), re.MULTILINE):
                found.add(name)
    return found


def imported_names(path):
    """(line, top-level module name) of every import in a file, at any depth."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = (node.func.attr if isinstance(node.func, ast.Attribute)
                        else getattr(node.func, "id", ""))
            if function in DYNAMIC_IMPORTS:
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def allowed_imports():
    """Module -> the project modules it may import."""
    scripts = model_scripts()
    allowed = {name: set(PLUMBING) for name in PLUMBING}
    allowed["synthetic"] = set(PLUMBING)
    allowed["fid"] = set(PLUMBING)
    allowed["judges"] = PLUMBING | {"synthetic", "fid"}
    for script in scripts:  # never another script (each stands alone), never a tool
        allowed[script] = PLUMBING | {"synthetic", "fid", "judges"}
    for tool in TOOLS:
        allowed[tool] = PLUMBING | {"synthetic", "fid", "judges"} | scripts
    return allowed


def test_the_evaluation_layer_is_in_parts():
    assert os.path.isfile(os.path.join(REPO, "fid.py")), (
        "fid.py (Inception, FID, KID, reference statistics)")
    assert os.path.isfile(os.path.join(REPO, "judges.py")), (
        "judges.py (the classifiers that judge samples)")
    assert SEVEN_SCRIPTS <= model_scripts(), f"model scripts found: {sorted(model_scripts())}"


def test_every_module_has_a_layer():
    unknown = sorted(set(modules()) - set(allowed_imports()))
    assert not unknown, (
        f"top-level modules in no layer (add them to tests/test_layers.py): {unknown}")


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_only_point_down(name):
    project, allowed = set(modules()), allowed_imports()
    upward = [f"{name}.py:{line} imports {target}"
              for line, target in imported_names(modules()[name])
              if target in project and target != name and target not in allowed.get(name, set())]
    assert not upward, upward


def test_fid_needs_no_more_than_the_plumbing_and_its_libraries():
    stdlib = set(sys.stdlib_module_names)
    outside = sorted({f"{target} (line {line})" for line, target in imported_names(modules()["fid"])
                      if target not in stdlib | FID_LIBRARIES | PLUMBING})
    assert not outside, outside
