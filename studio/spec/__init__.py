"""The job spec: the one contract between the web UI, the CLI and the child processes.

A spec is a YAML file of nested sections. Each field's `help` metadata is the only help text: the CLI
and the web UI both show it. Unknown keys and bad values raise `SpecError`, which names the field.

    spec = load("examples/identity_lora.yaml", ["train.max_steps=10"])
    dump(spec, "runs/x/spec.yaml")

fields.py: SpecError, the field constructors and the choice lists; sections.py: the sections; io.py: YAML,
overrides and coercion; rules.py: validation.
"""
from studio.spec.fields import *  # noqa: F401,F403  SpecError and the choice lists
from studio.spec.io import (  # noqa: F401
    type_hints, _is_section, dump, dumps, field_help, field_info, flatten, from_dict, get, load, merge, parse_overrides,
    read_yaml, to_dict,
)
from studio.spec.sections import *  # noqa: F401,F403  JobSpec and its sections
from studio.spec.stages import *  # noqa: F401,F403  the preference and RL stages' sections
from studio.spec.tasks import *  # noqa: F401,F403  the task table
from studio.spec.rules import validate  # noqa: F401,E402  (last: no section module may shadow it)
