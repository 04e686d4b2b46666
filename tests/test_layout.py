"""The shape of the code: what is installed, how modules import each other, where registration happens."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from transformers.dynamic_module_utils import get_relative_import_files

ROOT = Path(__file__).resolve().parent.parent
# The files that travel with the weights (remote code), flat in one folder: what transformers copies beside the
# weights for the model, its video processor and its pipeline (each with the siblings it imports relatively).
REMOTE_CODE_ENTRIES = ("modeling_vistr.py", "image_processing_vistr.py", "pipeline_vistr.py")
MODEL_FILES = sorted({Path(name).stem for entry in REMOTE_CODE_ENTRIES
                      for name in [entry, *get_relative_import_files(str(ROOT / entry))]})  # fmt: skip
# the scripts the design card asks for at the root, beside the model, and the browser demo, where a Hugging Face
# Space runs it
ROOT_TOOLS = ["convert_checkpoint", "train_accelerate", "app"]
TOOLS = sorted(path.stem for path in (ROOT / "tools").glob("*.py") if path.stem != "__init__")
OUR_NAMES = set(MODEL_FILES + ROOT_TOOLS + TOOLS)


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_only_the_vistr_package_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py-modules" not in setuptools
    assert setuptools["packages"] == ["vistr", "vistr.tools"]
    assert setuptools["package-dir"] == {"vistr": ".", "vistr.tools": "tools"}


def test_the_root_holds_only_the_remote_code_and_the_design_cards_scripts():
    """Anything else (a tool, a script that made an asset) belongs in tools/, benchmarks/ or assets/."""
    assert sorted(path.stem for path in ROOT.glob("*.py")) == sorted(["__init__", *MODEL_FILES, *ROOT_TOOLS])


def test_model_files_import_siblings_relatively_and_nothing_else_of_ours():
    for name in MODEL_FILES:
        for node in _imports(ROOT / f"{name}.py"):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in MODEL_FILES, f"{name}.py: from {'.' * node.level}{node.module}"
            else:
                modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(module.split(".")[0] in OUR_NAMES | {"vistr"} for module in modules), (name, modules)


# The files that travel with the weights, in layers from the bottom up: a file imports only its own layer and those
# below it. The model (what `AutoModel` loads) knows nothing of the processor, the pipeline, cards or tools.
LAYERS = {
    "helpers": {"optional_dependencies"},
    "model": {"configuration_vistr", "modeling_vistr", "loss_vistr", "deform_conv", "frozen_batch_norm"},
    "video processor": {"image_processing_vistr", "video_io", "clip_linking", "mask_upsampling", "flip_averaging"},
    "pipeline": {"pipeline_vistr"},
}


def test_dependencies_point_down_the_layers():
    assert set().union(*LAYERS.values()) == set(MODEL_FILES), "place each model file in a layer"
    allowed: set[str] = set()
    for layer, names in LAYERS.items():
        allowed |= names
        for name in names:
            imported = {node.module for node in _imports(ROOT / f"{name}.py") if isinstance(node, ast.ImportFrom)
                        and node.level}  # fmt: skip
            assert imported <= allowed, f"{name}.py ({layer}) imports {sorted(imported - allowed)} from above it"


def test_tools_import_the_package_by_its_absolute_name():
    for path in [*(ROOT / f"{name}.py" for name in ROOT_TOOLS), *(ROOT / "tools").glob("*.py")]:
        for node in _imports(path):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path.name}: relative import"
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            assert not any(module.split(".")[0] in OUR_NAMES for module in modules), (path.name, modules)


def test_no_module_hides_import_errors():
    for path in [*ROOT.glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name):
                imports = [child for child in node.body if isinstance(child, (ast.Import, ast.ImportFrom))]
                assert not (node.type.id == "ImportError" and imports), f"{path.name}: import fallback"


def _type_checking_names(tree: ast.Module) -> set[str]:
    """Names a module imports only inside its top-level `if TYPE_CHECKING:` block."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    names |= {(alias.asname or alias.name).split(".")[0] for alias in child.names}
    return names


def _functions(tree: ast.Module):
    """The module's functions and methods (not nested ones: they share their outer function's imports)."""
    for node in tree.body:
        bodies = node.body if isinstance(node, ast.ClassDef) else [node]
        yield from (child for child in bodies if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def test_names_imported_for_type_checking_only_are_imported_where_used():
    """A heavy package imported only for annotations (`datasets` in tools/youtube_vis.py, so that `vistr segment`
    starts without it) must be imported by every function that uses it at run time."""
    for path in [*ROOT.glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for name in _type_checking_names(tree):
            for function in _functions(tree):
                nodes = [child for statement in function.body for child in ast.walk(statement)]
                annotations = {id(child) for node in nodes if isinstance(node, ast.AnnAssign)
                               for child in ast.walk(node.annotation)}  # fmt: skip
                used = any(isinstance(node, ast.Name) and node.id == name and id(node) not in annotations
                           for node in nodes)  # fmt: skip
                imported = any(isinstance(node, (ast.Import, ast.ImportFrom))
                               and name in {(alias.asname or alias.name).split(".")[0] for alias in node.names}
                               for node in nodes)  # fmt: skip
                assert imported or not used, f"{path.name}: {function.name} uses {name} without importing it"


def test_auto_classes_and_pipeline_are_registered_in_one_place():
    registering = set()
    for path in [*ROOT.glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("register", "register_pipeline"):
                    registering.add(path.relative_to(ROOT).as_posix())
    assert registering == {"__init__.py"}


@pytest.mark.parametrize("imports", [
    "import vistr.configuration_vistr",  # a module of ours first: it imports transformers while it is half done
    "import vistr",  # the package alone: the wiring waits for transformers
    "import transformers, vistr",  # transformers first: the package wires at once
    "from vistr import VisTRForVideoInstanceSegmentation",
])
def test_importing_the_package_or_any_module_registers_vistr(imports):
    script = (f"{imports}\nfrom transformers import AutoConfig\n"
              "from transformers.pipelines import PIPELINE_REGISTRY\n"
              "from vistr.modeling_vistr import VisTRPreTrainedModel\n"
              "print(AutoConfig.for_model('vistr').__class__.__module__, 'video-instance-segmentation' in "
              "PIPELINE_REGISTRY.get_supported_tasks(), VisTRPreTrainedModel.folder_publisher.__name__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests")
    assert done.stdout.split() == ["vistr.configuration_vistr", "True", "vistr.tools.model_card"], done.stderr[-2000:]


def test_importing_the_package_imports_neither_torch_nor_transformers():
    """What makes `vistr --help` quick: the package's classes load on first use."""
    script = ("import sys, vistr\nprint(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
              "print(vistr.VisTRConfig.model_type, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests")
    assert done.stdout.split("\n")[:2] == ["[]", "vistr True"], done.stderr[-2000:]


def _installed_with(requirements) -> set[str]:
    """The distributions that `pip install REQUIREMENTS` brings here: theirs and their requirements' (no extras),
    recursively, as normalized names."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, todo = set(), [Requirement(requirement) for requirement in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        found.add(name)
        try:
            todo += [Requirement(line) for line in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            pass  # a platform requirement that is not installed here (no imports of ours can come from it)
    return found


def test_the_install_line_brings_every_package_the_model_files_import():
    """What transformers' remote-code loader checks in each model file (every import outside a `try`) comes with
    `REQUIRED_PACKAGES`; the packages of the other features are only `require`d, and the card names them all."""
    import sys
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from transformers.dynamic_module_utils import get_imports
    from vistr.optional_dependencies import OPTIONAL_PACKAGES, REQUIRED_PACKAGES

    installed = _installed_with(REQUIRED_PACKAGES)
    distributions = metadata.packages_distributions()
    for name in MODEL_FILES:
        for module in set(get_imports(ROOT / f"{name}.py")) - set(sys.stdlib_module_names):
            assert {canonicalize_name(d) for d in distributions[module]} & installed, f"{name}.py imports {module}"
    required = set()
    for name in MODEL_FILES:
        for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                required.add(node.args[0].value.split(".")[0])
    assert required == set(OPTIONAL_PACKAGES)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {requirement.name: requirement.specifier for requirement in map(Requirement, project)}
    for package in [*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES]:  # the versions the project itself asks for, if any
        requirement = Requirement(package)
        assert requirement.name in bounds and requirement.specifier in (SpecifierSet(), bounds[requirement.name])
