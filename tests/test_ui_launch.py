"""The Train tab's devices, processes and DeepSpeed fields in a real headless browser: the device list, the
memory estimate before Start, and the launch command in Preview command."""
from __future__ import annotations

import pytest
from test_ui_browser import CHROMIUM, accordion, open_app, page, server, set_number  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")]


def _estimate(pg) -> str:
    return pg.inner_text("#memory-estimate")


def test_launch_fields_estimate_and_preview(server, page):  # noqa: F811
    from studio import hardware as devices
    from studio import spec as specmod

    pg = page
    open_app(pg, server["url"])  # the page's load fills the device list too (this machine's GPUs)
    pg.wait_for_function("() => document.querySelector('#memory-estimate')?.innerText.includes('GiB per GPU')", timeout=60_000)
    one = _estimate(pg)
    accordion(pg, "launch-group").click()  # open the accordion
    # the device list: what this machine has (the CPU always)
    pg.locator("#f-launch-devices input").first.click()
    pg.wait_for_selector("#f-launch-devices [role=listbox]")
    options = pg.eval_on_selector_all("#f-launch-devices [role=option]", "els => els.map(e => e.getAttribute('aria-label'))")
    pg.keyboard.press("Escape")
    assert "CPU" in options and all(g.label in options for g in devices.detect())
    # two processes with ZeRO-3 full fine-tuning: the estimate changes, Preview shows torchrun
    set_number(pg, "f-launch-nproc_per_node", 2)
    pg.locator("#f-launch-deepspeed input").first.click()
    pg.locator("#f-launch-deepspeed [role=option][aria-label='ZeRO-3 (shard weights too)']").click()
    pg.keyboard.press("Escape")
    pg.wait_for_function(f"() => document.querySelector('#memory-estimate')?.innerText !== {one!r}", timeout=30_000)
    assert "GiB per GPU" in _estimate(pg)
    pg.click("#preview-cmd")
    pg.wait_for_function("() => document.querySelector('#command')?.innerText.includes('torch.distributed.run')", timeout=30_000)
    text = pg.inner_text("#command")
    assert "-m torch.distributed.run --nproc_per_node=2 --standalone -m studio.train.job runs/" in text
    # the spec the form makes carries the choices (Save spec writes it into the working folder)
    pg.click("#save-spec")
    saved = server["workdir"] / "specs" / "train.yaml"
    pg.wait_for_function("() => document.querySelector('#message')?.innerText.includes('saved')", timeout=30_000)
    spec = specmod.load(saved)
    assert (spec.launch.nproc_per_node, spec.launch.deepspeed, spec.launch.devices) == (2, "z3", None)
