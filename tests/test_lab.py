"""`python -m course_lib lab`: JupyterLab with the course's settings. (tests/browser checks what a
learner sees; these check the settings themselves against the installed JupyterLab.)"""

import json
import os
import sys
from pathlib import Path

from course_lib import lab

OVERRIDES = lab.config_dir() / "labconfig" / "default_setting_overrides.json"
SCHEMAS = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"


def test_every_override_names_a_real_setting_with_an_allowed_value():
    """A misspelt plugin or setting name is silently ignored by JupyterLab; catch it here."""
    overrides = json.loads(OVERRIDES.read_text())
    assert overrides, "no settings"
    for plugin, settings in overrides.items():
        package, _, name = plugin.partition(":")
        schema = json.loads((SCHEMAS / package / f"{name}.json").read_text())
        for key, value in settings.items():
            spec = schema["properties"].get(key)
            assert spec is not None, f"{plugin} has no setting {key!r}"
            allowed = [c["const"] for c in spec.get("oneOf", []) if "const" in c]
            if allowed:
                assert value in allowed, f"{plugin}:{key} = {value!r}, allowed {allowed}"
            else:
                assert type(value).__name__ == {"boolean": "bool", "string": "str"}[spec["type"]]


def test_the_course_settings_come_first_and_earlier_folders_are_kept():
    env = lab.environment({"JUPYTER_CONFIG_PATH": "/somewhere/else", "HOME": "/h"})
    assert env["JUPYTER_CONFIG_PATH"].split(os.pathsep) == [str(lab.config_dir()), "/somewhere/else"]
    assert env["HOME"] == "/h"
    assert lab.environment({})["JUPYTER_CONFIG_PATH"] == str(lab.config_dir())


def test_the_command_is_this_environments_jupyter_lab_with_arguments_passed_through():
    assert lab.command(["--port", "8890"]) == [sys.executable, "-m", "jupyter", "lab", "--port", "8890"]
