import importlib

import pytest

from dinov3kit.optional import PACKAGES, MissingDependencyError, require


def test_require_imports_an_installed_package():
    assert require("tqdm.auto").__name__ == "tqdm.auto"


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_a_missing_package_names_itself_and_its_extra(module, monkeypatch):
    real_import = importlib.import_module

    def without(name, *args):
        if name.split(".")[0] == module:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without)
    package, extra = PACKAGES[module]
    with pytest.raises(MissingDependencyError, match=rf"^ONNX export needs the optional package '{package}'; "
                                                     rf"install it with: pip install 'dinov3kit\[{extra}\]'$"):  # fmt: skip
        require(module, "ONNX export")
