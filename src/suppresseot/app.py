"""``suppress-eot app``: a Gradio web app over the API (pick words to suppress, see both images and the maps).

One model is loaded at start and shared by every visitor; Gradio's queue runs one job at a time (others see
their place in the line) and a lock makes sure no two runs ever share the model. Cancel stops a run at its
next step through ``SuppressEOT.on_step``. Every run is saved under ``--out`` as the CLI saves it; "compare with"
also runs one baseline or ablation (``approaches``) on the same seed or photo and saves it beside.
"""
from __future__ import annotations

import asyncio
import csv
import gc
import math
import shutil
import tempfile
import threading
import weakref
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import SuppressEOTError

MAX_UPLOAD = "20mb"
MAX_PIXELS = 40_000_000  # 40 MP: any camera photo; Pillow's own bomb limit is ~89 MP
METHODS = ["soft-weight", "alpha", "beta", "delete", "weight"]
NONE = "none"  # the "compare with" choice that runs SuppressEOT alone
EOT_HINT = ("Click the words to suppress (several at once: they are suppressed together). The end token and "
            "its padding copies (indices after the last word, up to 76) are the EOT embeddings: SuppressEOT "
            "edits them for you, so pick only words.")


def add_parser(sub) -> None:
    from .cli import _add_model_options

    p = sub.add_parser("app", help="start the web app (Gradio): click words to suppress, see images and maps",
                       description="Serve a web app over one loaded model: Generate, Photo and Study tabs. "
                                   "Needs the app extra: pip install 'suppresseot[app]'.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this user name and password")
    p.add_argument("--share", action="store_true",
                   help="also open a public *.gradio.live link (default: off, nothing public)")
    p.add_argument("--out", default="runs", help="folder for the run directories, and the Study tab's batch "
                                                 "folders (default: %(default)s)")
    p.add_argument("--max-upload", default=MAX_UPLOAD, help="largest upload (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="largest uploaded photo in pixels, width x height (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    _add_model_options(p)
    p.set_defaults(command="app")


def _gradio():
    try:
        import gradio
    except ImportError as exc:
        raise SuppressEOTError("the web app needs Gradio: pip install 'suppresseot[app]'") from exc
    return gradio


def run(args) -> int:
    gr = _gradio()
    from .api import SuppressEOT
    from .cli import loras_of
    from .runs import check_writable

    auth = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SuppressEOTError("--auth takes USER:PASS, e.g. --auth ana:secret")
        auth = (user, password)
    out = check_writable(args.out)
    model = SuppressEOT.from_pretrained(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                                        fast=args.fast, cuda_graphs=args.cuda_graphs,
                                        offload_models=args.offload_models, fused_attention=args.fused_attention,
                                        compile_unet=args.compile, static_graphs=args.static_graphs,
                                        lora=loras_of(args), variant=args.variant,
                                        config=args.model_config)
    demo = App(model, out, max_pixels=args.max_pixels).build()
    demo.launch(**launch_options(out, args.host, args.port, auth, args.share, args.max_upload),
                prevent_thread_lock=True, quiet=True, theme=gr.themes.Soft())
    print(f"suppress-eot app: open {demo.local_url}" + (f" (public link: {demo.share_url})" if demo.share_url else "")
          + "; Ctrl+C stops it", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0


def launch_options(out: Path, host: str = "127.0.0.1", port: int | None = None, auth=None, share: bool = False,
                   max_upload: str = MAX_UPLOAD) -> dict:
    """Safe defaults: loopback, no share link, only ``out`` (besides Gradio's own cache) served, bounded uploads."""
    return dict(server_name=host, server_port=port, auth=auth, share=share, allowed_paths=[str(Path(out).resolve())],
                max_file_size=max_upload, show_error=True, ssr_mode=False)


def shown_path(path) -> str:
    """``path`` as the page prints it: relative to the working directory where it lies under it (the folder the
    app was started from tells a visitor nothing, and docs/app.png is taken with neutral paths); hub ids and
    paths elsewhere as given."""
    text = str(path)
    if not Path(text).is_absolute():
        return text
    try:
        return str(Path(text).relative_to(Path.cwd()))
    except ValueError:
        return text


class Cancelled(SuppressEOTError):
    """Raised by the step hook when the run's Cancel was pressed (or its client went away)."""


def _error(gr, message: str):
    return gr.Error(message, print_exception=False)


class App:
    """The app's state: the model (loaded once), the output folder, and the lock that serializes runs."""

    def __init__(self, model, out: str | Path, max_pixels: int = MAX_PIXELS):
        self.model = model
        self.out = Path(out)
        self.max_pixels = max_pixels
        self.lock = threading.Lock()  # one run on the model at a time, even while a cancelled one winds down
        self.zips = Path(tempfile.mkdtemp(prefix="suppresseot-app-"))  # the downloads; removed with the app
        weakref.finalize(self, shutil.rmtree, self.zips, True)
        self.busy = False
        self.step = None  # the running (or last) run's (stage, step), for a status line

    # --- running jobs -------------------------------------------------------------------------
    async def _work(self, fn, *args):
        """Run ``fn`` in a thread; a cancelled job (Cancel, or the client left) stops the run at its next step."""
        gr = _gradio()
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._locked, stop, fn, *args)
        except asyncio.CancelledError:
            stop.set()
            raise
        except Cancelled:
            raise _error(gr, "cancelled") from None
        except SuppressEOTError as exc:
            raise _error(gr, str(exc)) from None

    def _locked(self, stop: threading.Event, fn, *args):
        def on_step(stage, step):
            self.step = stage, step
            if stop.is_set():
                raise Cancelled(f"cancelled at {stage} step {step}")

        with self.lock:
            if stop.is_set():
                raise Cancelled("cancelled before it started")
            self.busy, self.model.on_step, failure = True, on_step, None
            try:
                return fn(*args)
            except SuppressEOTError as exc:  # re-raised below without its traceback, whose frames hold tensors
                failure = type(exc), str(exc)
            finally:
                self.model.on_step = None
                if failure is None:
                    self.busy = False
            gc.collect()  # the stopped run's tensors are garbage now: hand their device memory back
            self.model.backend.release_cache()
            self.busy = False
            raise failure[0](failure[1])

    # --- inputs -------------------------------------------------------------------------------
    def chips(self, prompt: str):
        """The prompt's words as (label, token indices) choices: one chip per word, BPE pieces together."""
        if not prompt or not prompt.strip():
            return []
        try:
            table = self.model.tokens(prompt)
        except SuppressEOTError:
            return []
        pieces = self.model.tokenizer.token_strings(table.ids)
        choices, current = [], []
        for i in table.word_indices:
            current.append(i)
            if pieces[i].endswith("</w>") or i == table.n - 2:
                label = "".join(table.words[j] for j in current)
                choices.append((f"{label} ({','.join(map(str, current))})", ",".join(map(str, current))))
                current = []
        return choices

    def group(self, prompt: str, chips: list[str] | None, words: str | None) -> list[int]:
        """One token group from the clicked chips and the typed words/indices (comma-separated)."""
        if not prompt or not prompt.strip():
            raise SuppressEOTError("the prompt is empty: type the text that describes the image")
        items: list = [int(i) for chip in (chips or []) for i in str(chip).split(",") if i.strip()]
        for part in (words or "").split(","):
            part = part.strip()
            if part:
                items.append(int(part) if part.lstrip("-").isdigit() else part)
        if not items:
            raise SuppressEOTError("choose what to suppress: click a word of the prompt (or type words)")
        return self.model.resolve(prompt, [items])[0]

    @staticmethod
    def settings(alpha, tau, iterations, method):
        from .config import SuppressionSettings

        for name, value in (("alpha", alpha), ("tau", tau), ("iterations", iterations)):
            if value is None or not math.isfinite(float(value)):
                raise SuppressEOTError(f"{name} must be a finite number, got {value}")
        return SuppressionSettings(alpha=float(alpha), tau=float(tau), iterations=int(iterations),
                                   method=method or "soft-weight").validate()

    @staticmethod
    def steps(value) -> int:
        if value is None or not math.isfinite(float(value)) or int(value) < 1 or int(value) != float(value):
            raise SuppressEOTError(f"steps must be a whole number of at least 1, got {value}")
        return int(value)

    def photo(self, path) -> Image.Image:
        """An uploaded photo as the CLI reads it, after checking its size in pixels from the header alone."""
        from .images import load_rgb

        if not path:
            raise SuppressEOTError("upload a photo first (JPEG or PNG)")
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            width = height = None
        except Exception as exc:
            raise SuppressEOTError(f"the upload is not an image Pillow can read ({type(exc).__name__}); "
                                   f"upload a JPEG or PNG") from None
        if width is None or width * height > self.max_pixels:
            size = "" if width is None else f" ({width}x{height} = {width * height:,} pixels)"
            raise SuppressEOTError(f"the photo is too large{size}: the limit is {self.max_pixels:,} pixels; "
                                   f"scale it down and upload again")
        try:
            return load_rgb(path)
        except Image.DecompressionBombError as exc:
            raise SuppressEOTError(f"the photo is too large ({exc}); scale it down") from None

    # --- handlers -----------------------------------------------------------------------------
    def baselines(self, kind: str) -> list[str]:
        """The "compare with" choices: every other approach that runs on this kind of image, model and backend."""
        from . import approaches

        return [NONE] + [name for name in approaches.names(kind=kind, family=self.model.family.name,
                                                           backend=self.model.backend.name)
                         if name != approaches.DEFAULT]

    def baseline(self, name, kind: str, settings):
        """The approach to compare with (None for "none"), checked before any work: a bad choice costs no run."""
        from . import approaches

        if not name or name == NONE:
            return None
        if name == approaches.DEFAULT:
            raise SuppressEOTError(f"SuppressEOT always runs; compare it with another approach: "
                                   f"{', '.join(self.baselines(kind)[1:])}")
        return self.model.approach(name, kind).check(mode="add" if settings.alpha < 0 else "suppress")

    def _generate(self, prompt, chips, words, seed, alpha, tau, iterations, method, steps, compare=NONE):
        group = self.group(prompt, chips, words)
        settings, steps = self.settings(alpha, tau, iterations, method), self.steps(steps)
        if seed is None or not math.isfinite(float(seed)):
            raise SuppressEOTError(f"the seed must be a whole number, got {seed}")
        baseline = self.baseline(compare, "generated", settings)
        result = self.model.generate(prompt, group, seed=int(seed), settings=settings, steps=steps)
        other = None if baseline is None else self.model.generate(prompt, group, seed=int(seed), settings=settings,
                                                                  steps=steps, approach=baseline.name)
        return self._show(result, other)

    def _edit(self, upload, prompt, chips, words, inversion, alpha, tau, iterations, method, steps, compare=NONE):
        image = self.photo(upload)
        group = self.group(prompt, chips, words)
        settings, steps = self.settings(alpha, tau, iterations, method), self.steps(steps)
        baseline = self.baseline(compare, "real", settings)
        inverted = self.model.invert(image, prompt, inversion or "nt", steps=steps)
        inverted.source = Path(upload).name
        result = self.model.edit(inverted, suppress=group, settings=settings)
        other = None
        if baseline is not None:
            # one call for both cases: a baseline that shares this project's inversion edits it (inverted once,
            # edited twice); LEDITS++ takes its crop and inverts it its own way
            other = self.model.edit(inverted, suppress=group, settings=settings, approach=baseline.name)
            if other.inversion is not inverted:
                other.inversion.source = inverted.source
        return (Image.fromarray(inverted.image), Image.fromarray(inverted.reconstruction)) + self._show(result, other)

    def _show(self, result, other=None):
        """Save the run directories (SuppressEOT's, and the baseline's if any: both only once both ran, so a
        cancelled comparison saves nothing) and turn them into the page's outputs."""
        import pandas as pd

        from .images import cross_attention_grid
        from .runs import save_run

        extra = {"command": "suppress-eot app"}
        run_dir = save_run(result, self.out, extra=extra)
        other_dir = None if other is None else save_run(other, self.out, extra=extra)
        archive = self._archive([run_dir] if other is None else [run_dir, other_dir],
                                run_dir.name + ("" if other is None else f"-vs-{other.approach}"))
        chosen = result.token_indices
        maps = None
        if result.cross_attention is not None:
            maps = cross_attention_grid(result.cross_attention[:, :, :, chosen],
                                        [f"{i}:{result.tokens.words[i]}" for i in chosen], ["original", "suppressed"],
                                        cell=160)
        loss = pd.DataFrame([{"iteration": n, "loss": float(row[term]), "term": term}
                             for n, row in enumerate(result.ito_log)
                             for term in ("total", "cross_retain", "cross_erase", "self_retain", "self_erase")],
                            columns=["iteration", "loss", "term"])
        words = " ".join(result.tokens.words[i] for i in chosen)
        info = (f"Suppressed **{words}** (tokens {', '.join(map(str, chosen))}), alpha {result.settings.alpha:g}, "
                f"tau {result.settings.tau:g}, {result.sampling.num_steps} steps; "
                f"{sum(result.seconds.values()):.1f} s. Saved to `{shown_path(run_dir)}`.")
        if other is not None:
            shared = " (with the shared inversion)" if other.inversion is result.inversion is not None else ""
            info += (f" Compared with **{other.approach}**: {sum(other.seconds.values()):.1f} s{shared}, saved to "
                     f"`{shown_path(other_dir)}`.")
        compare = self._compare(result, other)
        return (result.original, result.suppressed), maps, loss, archive, info, shown_path(run_dir), compare

    def _archive(self, run_dirs: list[Path], name: str) -> str:
        """One zip of the run directories: a comparison downloads as one file, both folders in it."""
        path = self.zips / f"{name}.zip"  # unique: named after the first run directory, unique under --out
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for run_dir in run_dirs:
                for file in sorted(run_dir.rglob("*")):
                    if file.is_file():
                        z.write(file, file.relative_to(run_dir.parent))
        return str(path)

    @staticmethod
    def _compare(result, other):
        """The comparison gallery: the original, SuppressEOT's and the baseline's edit, with their times; also the
        baseline's own original where it differs by more than rounding (LEDITS++'s reconstruction), since what the
        baseline changed is measured against that; a diffusers pipeline's few pixels off by one are not shown."""
        gr = _gradio()
        if other is None:
            return gr.update(value=None, visible=False)
        items = [(result.original, "original"),
                 (result.suppressed, f"SuppressEOT ({sum(result.seconds.values()):.1f} s)"),
                 (other.suppressed, f"{other.approach} ({sum(other.seconds.values()):.1f} s)")]
        differs = np.abs(np.asarray(other.original, np.int16) - np.asarray(result.original, np.int16)).mean() > 1
        if differs:
            items.append((other.original, f"{other.approach}'s own original"))
        return gr.update(value=items, visible=True)

    # --- study --------------------------------------------------------------------------------
    def study_folders(self) -> list[str]:
        """Batch folders under ``--out`` (those with a summary.csv), as paths relative to it."""
        found = sorted({str(p.parent.relative_to(self.out)) for p in self.out.glob("**/summary.csv")
                        if len(p.relative_to(self.out).parts) <= 4})
        return found

    def _study_folder(self, name: str) -> Path:
        if not name:
            raise SuppressEOTError(f"no batch folder chosen: run `suppress-eot batch --out "
                                   f"{shown_path(self.out)}/NAME` first")
        folder = (self.out / name).resolve()
        if not folder.is_relative_to(self.out.resolve()) or not (folder / "summary.csv").is_file():
            raise SuppressEOTError(f"{name} is not a batch folder under {shown_path(self.out)}")
        return folder

    def _finished_runs(self, name: str) -> tuple[Path, list[dict]]:
        """The batch folder ``name`` and the finished rows of its summary.csv (a bad name: a message in the page)."""
        try:
            folder = self._study_folder(name)
        except SuppressEOTError as exc:
            raise _error(_gradio(), str(exc)) from None
        with open(folder / "summary.csv", newline="") as f:
            return folder, [r for r in csv.DictReader(f) if r.get("status") == "finished"]

    def study(self, name: str, sets: list[str] | None, backends: list[str] | None):
        """The batch's finished runs (filtered), its report plots and CLIPScore table."""
        gr = _gradio()
        folder, rows = self._finished_runs(name)
        import pandas as pd

        all_sets = sorted({r.get("set", "") for r in rows})
        all_backends = sorted({r.get("backend", "") for r in rows})
        shown = [r for r in rows if (not sets or r.get("set") in sets) and (not backends or r.get("backend") in backends)]
        table = pd.DataFrame([{"approach": "suppresseot", **{k: r.get(k) for k in (
            "task", "set", "type", "approach", "backend", "task_seconds", "final_ito_total_loss", "run_dir")
            if r.get(k) is not None}} for r in shown], columns=["task", "set", "type", "approach", "backend",
                                                                  "task_seconds", "final_ito_total_loss", "run_dir"])
        plots = [(str(p), p.parent.name + "/" + p.name) for p in sorted(folder.glob("**/*.png"))
                 if p.name in ("ito_loss.png", "seconds_per_iteration.png", "memory_per_stage.png",
                               "memory_trace.png") or p.name.startswith("grid-")]  # grids: the reports' images
        scores = None
        for path in sorted(folder.glob("**/clipscores.csv"))[:1]:
            scores = pd.read_csv(path)
        tasks = sorted({r["task"] for r in shown})
        return (table, gr.update(choices=all_sets, value=sets or []), gr.update(choices=all_backends,
                value=backends or []), plots, scores, gr.update(choices=tasks, value=tasks[0] if tasks else None))

    def study_task(self, name: str, task: str):
        """The task on every backend it ran on (torch vs Jittor side by side): its original once per backend (the
        approaches share it: the same noise or photo), then each approach's edited image, labelled."""
        folder, rows = self._finished_runs(name)
        rows = [r for r in rows if r.get("task") == task]
        gallery, shown = [], set()
        for row in rows:
            run_dir = (folder / row["run_dir"]).resolve()
            if not run_dir.is_relative_to(folder):
                continue
            backend = row["backend"]
            if backend not in shown and (run_dir / "original.png").is_file():
                gallery.append((str(run_dir / "original.png"), f"{backend}: original"))
                shown.add(backend)
            if (run_dir / "suppressed.png").is_file():
                gallery.append((str(run_dir / "suppressed.png"), f"{backend}: {row.get('approach') or 'suppresseot'}"))
        return gallery

    # --- the page -----------------------------------------------------------------------------
    def build(self):
        gr = _gradio()

        def advanced(real: bool):
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    alpha = gr.Number(1.0, label="alpha (SWR strength; negative adds)")
                    tau = gr.Slider(0, 1, 0.8, step=0.05, label="tau (start at step (1-tau)*steps)")
                    iterations = gr.Number(10, precision=0, label="ITO iterations per step")
                    method = gr.Dropdown(METHODS, value="soft-weight", label="method")
                    steps = gr.Number(50, precision=0, label="DDIM steps")
            return alpha, tau, iterations, method, steps

        def token_picker(prompt, name):
            chips = gr.CheckboxGroup([], label="Words to suppress (click)", elem_id=None)
            words = gr.Textbox(label="or type words / token indices, comma-separated", placeholder="glasses, 7")
            gr.Markdown(EOT_HINT)
            prompt.change(lambda p: gr.update(choices=self.chips(p), value=[]), prompt, chips,
                          concurrency_limit=None, show_progress="hidden", api_name=f"{name}_tokens")
            return chips, words

        def compare_with(kind: str):
            return gr.Dropdown(self.baselines(kind), value=NONE, label="compare with", scale=1,
                               elem_id=f"{kind}_compare_with", allow_custom_value=True)  # checked: runs here

        def results(name: str):
            with gr.Row():
                pair = gr.ImageSlider(label="original | suppressed", type="pil", format="png", elem_id="pair")
                maps = gr.Image(label="cross-attention of the chosen tokens", type="pil", format="png",
                                elem_id="maps")
            with gr.Row():
                loss = gr.LinePlot(x="iteration", y="loss", color="term", label="ITO losses", elem_id="loss")
                with gr.Column():
                    info = gr.Markdown(elem_id="info")
                    archive = gr.File(label="run directories (zip)")
                    run_dir = gr.Textbox(label="saved to", interactive=False, elem_id="run_dir")
            compare = gr.Gallery(label="compared: original | SuppressEOT | the baseline", format="png", columns=4,
                                 height="auto", visible=False, elem_id=f"{name}_compare")
            return [pair, maps, loss, archive, info, run_dir, compare]

        # gr.Progress(track_tqdm=True) shows the pipeline's tqdm bars (denoising, inversion, null-text steps)
        async def generate(prompt, chips, words, seed, alpha, tau, iterations, method, steps, compare,
                           progress=gr.Progress(track_tqdm=True)):
            return await self._work(self._generate, prompt, chips, words, seed, alpha, tau, iterations, method,
                                    steps, compare)

        async def edit(upload, prompt, chips, words, inversion, alpha, tau, iterations, method, steps, compare,
                       progress=gr.Progress(track_tqdm=True)):
            return await self._work(self._edit, upload, prompt, chips, words, inversion, alpha, tau, iterations,
                                    method, steps, compare)

        with gr.Blocks(title="SuppressEOT", analytics_enabled=False) as demo:  # no calls home
            gr.Markdown("# SuppressEOT\nSuppress what a prompt names, in generated images or your photos "
                        f"(model: `{shown_path(self.model.model)}`; runs saved under `{shown_path(self.out)}`).")
            with gr.Tab("Generate"):
                with gr.Row():
                    prompt = gr.Textbox("A man with a beard wearing glasses and a hat in blue shirt",
                                        label="prompt", elem_id="gen_prompt", scale=4)
                    seed = gr.Number(2, precision=0, label="seed", scale=1)
                    compare = compare_with("generated")
                chips, words = token_picker(prompt, "generate")
                settings = advanced(False)
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="gen_run")
                    cancel = gr.Button("Cancel", elem_id="gen_cancel")
                outputs = results("generate")
                event = run.click(generate, [prompt, chips, words, seed, *settings, compare], outputs,
                                  api_name="generate")
                cancel.click(None, None, None, cancels=[event], api_name=False)
                demo.load(lambda p: gr.update(choices=self.chips(p)), prompt, chips, api_name=False)
            with gr.Tab("Photo"):
                with gr.Row():
                    upload = gr.File(label="photo (any size; centre-cropped)", file_types=["image"],
                                     type="filepath", elem_id="photo_upload")
                    crop = gr.Image(label="crop", type="pil", format="png", interactive=False)
                    reconstruction = gr.Image(label="reconstruction (VAE)", type="pil", format="png",
                                              interactive=False)
                with gr.Row():
                    p_prompt = gr.Textbox(label="caption of the photo", elem_id="photo_prompt", scale=4)
                    inversion = gr.Radio(["nt", "npi"], value="nt", label="inversion (null-text / negative prompt)")
                    p_compare = compare_with("real")
                p_chips, p_words = token_picker(p_prompt, "edit")
                p_settings = advanced(True)
                with gr.Row():
                    p_run = gr.Button("Run", variant="primary", elem_id="photo_run")
                    p_cancel = gr.Button("Cancel")
                p_outputs = results("photo")
                upload.upload(lambda f, p: p or (Path(f).stem if f else ""), [upload, p_prompt], p_prompt,
                              concurrency_limit=None, api_name=False)  # the caption defaults as in `edit`
                p_event = p_run.click(edit, [upload, p_prompt, p_chips, p_words, inversion, *p_settings, p_compare],
                                      [crop, reconstruction, *p_outputs], api_name="edit")
                p_cancel.click(None, None, None, cancels=[p_event], api_name=False)
            with gr.Tab("Study"):
                out = shown_path(self.out)
                gr.Markdown(f"Batch folders under `{out}` (`suppress-eot batch --out {out}/NAME`).")
                with gr.Row():
                    folder = gr.Dropdown(self.study_folders(), value=None, label="batch folder",
                                         allow_custom_value=True)  # checked: under --out only
                    refresh = gr.Button("Refresh list", scale=0)
                    sets = gr.CheckboxGroup([], label="sets")
                    backends = gr.CheckboxGroup([], label="backends")
                table = gr.Dataframe(label="finished runs", interactive=False)
                with gr.Row():
                    task = gr.Dropdown([], label="task", allow_custom_value=True)
                    gallery = gr.Gallery(label="original / suppressed per backend", columns=4)
                plots = gr.Gallery(label="report plots", columns=2)
                scores = gr.Dataframe(label="CLIPScores (suppress-eot eval)", interactive=False)
                refresh.click(lambda: gr.update(choices=self.study_folders()), None, folder,
                              concurrency_limit=None, api_name=False)
                study_out = [table, sets, backends, plots, scores, task]
                folder.change(lambda f: self.study(f, [], []), folder, study_out, concurrency_limit=None,
                              api_name="study")
                for box in (sets, backends):
                    box.input(self.study, [folder, sets, backends], study_out, concurrency_limit=None,
                              api_name=False)
                task.change(self.study_task, [folder, task], gallery, concurrency_limit=None, api_name="study_task")
        demo.queue(default_concurrency_limit=1)
        return demo
