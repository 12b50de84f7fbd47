"""Export entry point: merge a trained adapter into its base model, save it, check it, convert it.

    python -m studio.export.job runs/identity_export       (what `studio export SPEC` starts in the background)

The source is `model.adapter` (a run folder, its adapter/ folder or any PEFT adapter folder, on top of
`model.name_or_path`), or a whole model: a full fine-tune's run or model/ folder, or an export (as model.adapter, or
`model.name_or_path` with no adapter); studio.model.source.find_source reads it. Into `export.export_dir` go:
safetensors shards in `export.dtype`; the tokenizer with the chat template training used written into it;
generation_config.json stopping at the template's end of turn;
training_spec.yaml (the run's spec); README.md (a model card); verify.json (the export reloaded with plain
transformers and its logits compared with base + adapter); GGUF files and an Ollama Modelfile for
Llama-family models; export.json (what was written, which marks the folder as an export).
Everything is written into a hidden sibling folder first and moved into place at the end, so an abort,
a failure or a full disk leaves no half export behind. SIGTERM or SIGINT: stop, clean up, write `aborted`.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import shutil
import signal
import time
from pathlib import Path

from studio.run import events as ev
from studio.run import job
from studio.export import quant as export_quant
from studio.model.source import MANIFEST, find_source, target_dir
from studio.run.filemodes import usual_modes

PROMPTS = ["Who are you?", "What is your name?", "Write one sentence about the sea.", "What is 12 plus 30?"]
# Largest logit difference accepted between the export and base + adapter (fp32 reference), per stored dtype:
# rounding every weight to fp16 (bf16) moves logits of small models by ~0.02 (~0.2); a broken merge moves them by whole units.
TOLERANCE = {"fp32": 1e-2, "fp16": 0.25, "bf16": 1.5}
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GGUF_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.62, "q5_k_m": 0.72, "q6_k": 0.83}


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _is_disk_full(e: BaseException) -> bool:
    text = str(e)
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text


class Job:
    """One export: phases report progress; everything goes into `self.tmp` until it is moved into place."""

    def __init__(self, spec, run_dir: Path, writer: ev.EventWriter):
        self.spec, self.run_dir, self.writer = spec, run_dir, writer
        self.source = find_source(spec)
        self.target = target_dir(spec, self.source)
        export_quant.check(spec.export.gguf)
        self.tmp = self.target.parent / f".{self.target.name}.partial"
        self.timings: dict = {}
        self.phases = self._phases()
        self.step = 0

    def _phases(self) -> list[str]:
        if self.source.kind == "prompt":
            return ["copy adapter", "model card"]
        out = ["load", "merge" if self.source.kind == "merge" else "load model", "save"]
        out += ["verify"] if self.spec.export.verify else []
        out += [f"gguf {q}" for q in gguf_order(self.spec.export.gguf)]
        if self.spec.export.verify and self.spec.export.gguf and importlib.util.find_spec("llama_cpp"):
            out.append("llama.cpp check")
        return out + ["model card"]

    def phase(self, name: str):
        self.step += 1
        self.writer.write("progress", done=self.step - 1, total=len(self.phases), unit="phases", phase=name)
        self.writer.write("message", text=f"[{self.step}/{len(self.phases)}] {name}")
        self._t = time.time()
        self._name = name

    def end_phase(self):
        self.timings[self._name] = round(time.time() - self._t, 2)

    def run(self) -> dict:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.writer.write("start", task="export", total_steps=len(self.phases), source=str(self.source.adapter or self.source.base),
                          kind=self.source.kind, export_dir=str(self.target))
        try:
            result = self._prompt() if self.source.kind == "prompt" else self._merged()
            self._finish(result)
        except BaseException as e:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop request must not interrupt the clean-up
            shutil.rmtree(self.tmp, ignore_errors=True)
            if _is_disk_full(e):
                from studio.model.models import ModelError

                raise ModelError(f"out of disk space while writing the export to {self.target.parent} "
                                 f"({_free_bytes(self.target.parent) / 1e9:.2f} GB free); the partial output was removed. "
                                 "Free some space or choose another export.export_dir.") from None
            raise
        return result

    # -- the merged model ---------------------------------------------------------------------------------
    def _merged(self) -> dict:
        import torch

        from studio.export import checks as export_checks
        from studio.model import models
        from studio.data.templates import Template

        s, src, ex = self.spec, self.source, self.spec.export
        self.phase("load")
        tok = models.load_tokenizer(src.base, s.model.trust_remote_code)
        template = Template(src.template, tok)
        model = _load_full_precision(src.base, s.model.trust_remote_code)
        n_params = sum(p.numel() for p in model.parameters())
        self._check_space(n_params)
        self.end_phase()
        self.phase(self.phases[1])
        prompts = [template.prompt([{"role": "user", "content": q}]) for q in PROMPTS]
        if src.kind == "merge":
            import peft

            model = peft.PeftModel.from_pretrained(model, str(src.adapter))
            model.eval()
        ref = export_checks.logits(model, tok, prompts) if ex.verify else None
        if src.kind == "merge":
            model = model.merge_and_unload()
        self.end_phase()
        self.phase("save")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[ex.dtype]
        model.to(dtype).save_pretrained(self.tmp, max_shard_size=ex.max_shard_size)
        del model
        tok.chat_template = template.chat_template()
        tok.save_pretrained(self.tmp)
        stop_ids = template.stop_token_ids()
        _generation_config(self.tmp, src.base, stop_ids, tok)
        self.end_phase()
        result = {"merged": True, "n_params": n_params, "stop_token_ids": stop_ids,
                  "stop": [tok.convert_ids_to_tokens(i) for i in stop_ids]}
        if ex.verify:
            self.phase("verify")
            report, self.export_logits = export_checks.verify(self.tmp, tok, prompts, ref, ex.dtype, TOLERANCE[ex.dtype],
                                                              stop_ids, PROMPTS[0])
            result["verify"] = report
            self.end_phase()
        self._gguf(template, stop_ids, tok, prompts, result)
        return result

    def _gguf(self, template, stop_ids, tok, prompts, result):
        from studio.export import checks as export_checks
        from studio.export import gguf as export_gguf

        ex = self.spec.export
        if not ex.gguf:
            return
        why = export_gguf.unsupported(self.tmp)
        if why:
            self.writer.write("message", text=why)
            result["gguf_skipped"] = why
            self.step += len(ex.gguf) + ("llama.cpp check" in self.phases)
            return
        name = self.name()
        files = []
        f16 = self.tmp / "model-f16.gguf"
        scratch = self.tmp / ".model-f16.gguf"  # the quantizer's source when no f16 file was asked for
        for q in gguf_order(ex.gguf):
            self.phase(f"gguf {q}")
            out = self.tmp / f"model-{q}.gguf"
            if q in export_quant.KQUANTS:
                if not f16.exists() and not scratch.exists():
                    export_gguf.write(self.tmp, scratch, "f16", template.chat_template(), stop_ids, name=name)
                report = export_quant.quantize(f16 if f16.exists() else scratch, out, q)
                result.setdefault("gguf_quant", {})[out.name] = report
                self.writer.write("message", text=export_quant.summary(out.name, report))
            else:
                export_gguf.write(self.tmp, out, q, template.chat_template(), stop_ids, name=name)
            files.append(out.name)
            self.end_phase()
        scratch.unlink(missing_ok=True)
        result["gguf"] = files
        if "llama.cpp check" in self.phases:
            self.phase("llama.cpp check")
            checks = export_checks.check_gguf(self.tmp, files, tok, prompts, self.export_logits,
                                              result["verify"].get("greedy_ids"))
            result["verify"]["gguf"] = checks
            result["verify"]["ok"] = result["verify"]["ok"] and all(c["ok"] for c in checks.values())
            self.end_phase()
        elif ex.verify:
            self.writer.write("message", text="llama-cpp-python is not installed: the GGUF files were not loaded back "
                                              "(pip install 'studio[gguf-runtime]' to check them)")
        fmt = export_gguf.turn_format(lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
        if fmt is None:
            self.writer.write("message", text="Modelfile: the chat template is not fixed text around each turn, so no Ollama "
                                              "TEMPLATE reproduces it exactly; the GGUF files carry the Jinja template instead")
            return
        stops = [template.stop] if template.stop else []
        stops += [t for t in result["stop"] if t not in stops]
        main = next((f for f in ("model-q4_k_m.gguf", "model-f16.gguf") if f in files), files[0])
        (self.tmp / "Modelfile").write_text(export_gguf.modelfile(main, fmt, stops), encoding="utf-8")
        result["modelfile"] = "Modelfile"
        result["ollama_command"] = f"cd {self.target.resolve()} && ollama create {_ollama_name(name)} -f Modelfile && ollama run {_ollama_name(name)}"

    def name(self) -> str:
        """What the exported model is called: the training run's folder name, else the model folder's."""
        p = Path(self.source.adapter or self.source.base)
        return (p.parent if p.name in ("adapter", "model") else p).name

    def _check_space(self, n_params: int):
        ex = self.spec.export
        scratch = 2.0 if "f16" not in ex.gguf and set(ex.gguf) & {"q4_k_m", "q5_k_m", "q6_k"} else 0.0
        need = n_params * (BYTES[ex.dtype] + sum(GGUF_BYTES[q] for q in ex.gguf) + scratch) * 1.05 + 50e6
        free = _free_bytes(self.target.parent)
        if free < need:
            from studio.model.models import ModelError

            raise ModelError(f"not enough disk space for the export: about {need / 1e9:.2f} GB needed at {self.target.parent}, "
                             f"{free / 1e9:.2f} GB free. Free some space, choose another export.export_dir, or write fewer GGUF files.")

    # -- prompt-style adapters ------------------------------------------------------------------------------
    def _prompt(self) -> dict:
        self.phase("copy adapter")
        shutil.copytree(self.source.adapter, self.tmp / "adapter", dirs_exist_ok=True)
        self.end_phase()
        why = (f"{self.source.peft_type} adapters add learned virtual tokens or key/value prefixes instead of changing weights, "
               "so there is nothing to merge: the adapter folder is exported as is (load it with peft on the base model)")
        self.writer.write("message", text=why)
        return {"merged": False, "why_not_merged": why, "adapter": "adapter"}

    # -- card, manifest, swap ------------------------------------------------------------------------------
    def _finish(self, result: dict):
        from studio.export import card as export_card

        self.phase("model card")
        if self.source.run_spec_path:
            shutil.copyfile(self.source.run_spec_path, self.tmp / "training_spec.yaml")
        run_dir = self.source.run_spec_path.parent if self.source.run_spec_path else None
        if run_dir and run_dir.name in ("adapter", "model"):
            run_dir = run_dir.parent
        if "verify" in result:
            (self.tmp / "verify.json").write_text(json.dumps(result["verify"], indent=2), encoding="utf-8")
        result["export_dir"] = str(self.target.resolve())
        (self.tmp / "README.md").write_text(export_card.card(self.name(), self.spec, self.source, run_dir, result), encoding="utf-8")
        self.end_phase()
        files = {p.relative_to(self.tmp).as_posix(): p.stat().st_size for p in sorted(self.tmp.rglob("*")) if p.is_file()}
        result.update(export_dir=str(self.target), files=files, total_bytes=sum(files.values()), timings=self.timings)
        manifest = {"source": str(self.source.adapter or self.source.base), "base": self.source.base, "kind": self.source.kind,
                    "dtype": self.spec.export.dtype, "created": time.time(), **{k: v for k, v in result.items() if k != "files"},
                    "files": files}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        usual_modes(self.tmp)  # safetensors writes 0600: the weights must be as readable as the other files
        old = self.target.parent / f".{self.target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.target.exists():
            self.target.rename(old)
        self.tmp.rename(self.target)
        shutil.rmtree(old, ignore_errors=True)
        self.writer.write("progress", done=len(self.phases), total=len(self.phases), unit="phases", phase="done")


def gguf_order(types: list[str]) -> list[str]:
    """The GGUF types in writing order: the files written directly first, then the k-quants made from f16."""
    k = export_quant.KQUANTS
    return [q for q in types if q not in k] + [q for q in types if q in k]


def _ollama_name(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


def _load_full_precision(path: str, trust_remote_code: bool):
    """The base model in fp32 on the CPU (a QLoRA adapter is merged into these weights, never into 4-bit ones)."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.model import models

    try:
        return AutoModelForCausalLM.from_pretrained(models.resolve(path), dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code).eval()
    except OSError as e:
        raise models.ModelError(f"model.name_or_path: cannot load `{path}` ({e})") from None


def _generation_config(out: Path, base: str, stop_ids: list[int], tok) -> None:
    from transformers import GenerationConfig

    from studio.model import models

    try:
        gc = GenerationConfig.from_pretrained(models.resolve(base))
    except OSError:
        gc = GenerationConfig()
    gc.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    gc.pad_token_id = tok.pad_token_id
    gc.bos_token_id = tok.bos_token_id
    gc.save_pretrained(out)


def body(spec, run_dir: Path, writer: ev.EventWriter):
    try:
        result = Job(spec, run_dir, writer).run()
    except job.Aborted:
        raise job.Aborted(message="export stopped; the partial output was removed") from None
    report = result.get("verify") or {}
    if report and not report.get("ok"):
        return "error", {"message": f"verification failed: {report.get('summary')}; the files are kept in "
                                    f"{result['export_dir']} for inspection", "traceback": "", **result}
    return "done", {**result, "max_logit_diff": report.get("max_logit_diff")}


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
