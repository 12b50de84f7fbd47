"""The layout's rules, read from the code: the child side never imports the parent side, errors.py is the ground
floor, no import cycle, no module over 400 lines, gradio only in studio/ui/; the task and stage tables match the
spec, the launcher, the CLI and the training child."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "studio"
PARENT = ("studio.launch", "studio.cli", "studio.ui")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the studio modules it imports anywhere (inside functions too)."""
    graph = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if p.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                  and node.args and isinstance(node.args[0], ast.JoinedStr)):
                targets = []  # import_module(f"studio.x.{name}"): resolved by the tables' tests below
            else:
                continue
            for t in targets:
                parts = t.split(".")
                for k in range(len(parts), 0, -1):
                    cand = ".".join(parts[:k])
                    if cand in mods:
                        if cand != name and not (name.startswith(cand + ".") and mods[cand].name == "__init__.py"):
                            deps.add(cand)
                        break
        graph[name] = deps
    return graph


def _reach(graph, start: str) -> dict[str, str]:
    """Every module `start` reaches, with the module that imports it on the way."""
    via, todo = {}, [start]
    while todo:
        m = todo.pop()
        for d in graph[m]:
            if d not in via and d != start:
                via[d] = m
                todo.append(d)
    return via


def test_the_child_side_never_imports_the_parent_side():
    mods = _modules()
    graph = _graph(mods)
    jobs = [m for m in mods if m.endswith(".job") and m != "studio.run.job"]
    assert len(jobs) >= 5, jobs
    stage_modules = [m for m in mods if m.startswith("studio.train.stages.")]  # reached through stages.get(name)
    found = []
    for start in jobs + stage_modules:
        via = _reach(graph, start)
        for m in via:
            if m.startswith(PARENT):
                chain = [m]
                while chain[-1] != start:
                    chain.append(via[chain[-1]])
                found.append(" <- ".join(chain))
    assert not found, found


def test_errors_is_the_ground_floor_and_the_tree_has_no_cycle_nor_long_module():
    mods = _modules()
    graph = _graph(mods)
    assert graph["studio.errors"] == set() and graph["studio.hardware"] == set()
    long = {m: n for m, p in mods.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
    gradio = [m for m, p in mods.items() if not m.startswith("studio.ui") and ("import gradio" in p.read_text() or "from gradio" in p.read_text())]
    assert not gradio, gradio
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_every_user_error_is_one_kind():
    from studio.data.registry import DataError
    from studio.data.templates import TemplateError
    from studio.errors import UserError, is_user_error
    from studio.model.models import ModelError
    from studio.spec import SpecError

    assert all(issubclass(e, UserError) for e in (SpecError, DataError, ModelError, TemplateError))
    assert is_user_error(SpecError("x")) and not is_user_error(ValueError("x"))


def test_the_task_table_matches_the_spec_launcher_preflight_and_cli():
    from studio import cli, spec as specmod
    from studio.launch import command, preflight
    from studio.spec.tasks import TASK_TABLE, TASKS

    task_field = next(f for f in dataclasses.fields(specmod.JobSpec) if f.name == "task")
    assert task_field.metadata["choices"] == TASKS
    assert set(command.ENTRY) == set(TASKS) and set(preflight.TASK_RULES) <= set(TASKS)
    for t in TASK_TABLE.values():
        assert importlib.util.find_spec(t.module) is not None, t.module
        assert hasattr(specmod.JobSpec(), t.name)  # each task's section
    verbs = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert set(TASKS) <= verbs and set(cli.VERBS) == verbs


def test_the_stage_table_matches_the_spec_data_page_and_trainers():
    from studio import spec as specmod
    from studio.data import preference
    from studio.spec.stages import STAGE_TABLE, STAGES
    from studio.train import stages
    from studio.ui import stage_fields

    stage_field = next(f for f in dataclasses.fields(specmod.MethodSpec) if f.name == "stage")
    assert stage_field.metadata["choices"] == STAGES
    sections = {f.name for f in dataclasses.fields(specmod.MethodSpec)}
    for s in STAGE_TABLE.values():
        assert stages.get(s.name).config, s.name  # its module in studio/train/stages/
        assert (s.name in sections) == bool(s.section), s.name
        assert set(s.data) <= set(preference.WHAT), s.data
    assert [own for _, own, _ in stage_fields.groups()] == [s.name for s in STAGE_TABLE.values() if s.section]
