"""``suppress-eot``: the command line, a thin layer over ``suppresseot.api``.

Bad input ends in one line on stderr and exit code 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

from .errors import SuppressEOTError

EXIT_BAD_INPUT = 2
# Modules that add subcommands: each has ``add_parser(subparsers)`` and ``run(args) -> int``; the
# parser each one adds sets ``command`` to its name. Imported lazily so `--help` stays quick.
EXTRA_COMMANDS = {
    "prepare": "suppresseot.study.cli",
    "batch": "suppresseot.study.cli",
    "eval": "suppresseot.evaluation.cli",
    "report": "suppresseot.evaluation.cli",
    "doctor": "suppresseot.backends.jittor.doctor",
    "app": "suppresseot.app",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look) and exit code 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _token_group(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a token group: write indices separated by commas, e.g. 4,5 (or use --suppress-words)")


def whole_number(minimum: int):
    """An argparse type: an int of at least ``minimum``, with a one-line message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}" if minimum else
                                             f"{text} must be 0 or more")
        return value

    return parse


def _blocks(text: str) -> tuple[str, ...]:
    blocks = tuple(part.strip() for part in text.split(","))
    if not all(b in ("down", "mid", "up") for b in blocks) or len(set(blocks)) != len(blocks):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of down, mid, up (each once)")
    return blocks


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


class _LoraScale(argparse.Action):
    """``--lora-scale S`` sets the scale of the ``--lora`` just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        if not namespace.lora or namespace.lora[-1][1] is not None:
            parser.error("--lora-scale follows the --lora it scales, once: --lora FILE --lora-scale 0.8")
        namespace.lora[-1][1] = value


def loras_of(args) -> list:
    """``(file, scale)`` of each ``--lora`` (scale 1 unless a ``--lora-scale`` followed it)."""
    return [(path, 1.0 if scale is None else scale) for path, scale in args.lora or []]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from .weights import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="Hugging Face hub id, local diffusers folder or single-file checkpoint (.safetensors, "
                        ".ckpt; converted once into a cached diffusers folder) of a Stable Diffusion 1.x, 2.x or "
                        "SDXL model, the family read from the model's configs (default: %(default)s; also "
                        "stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1-base, "
                        "stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0)")
    g.add_argument("--lora", action="append", type=lambda text: [text, None], metavar="FILE",
                   help="LoRA file (diffusers/PEFT or kohya format) fused into the weights; repeatable")
    g.add_argument("--lora-scale", action=_LoraScale, type=_finite, metavar="S",
                   help="scale of the --lora just before it (default: 1.0)")
    g.add_argument("--variant", default=None, metavar="NAME",
                   help="weights variant of a folder or hub repo, e.g. fp16 (downloads the half-size files; "
                        "upcast to the run's dtype)")
    g.add_argument("--model-config", default=None, metavar="NAME|DIR",
                   help="config of a single-file checkpoint: sd1, sd2 (768 px, v-prediction), sd2-base (512 px, "
                        "epsilon), sdxl, or a diffusers folder (default: chosen from the checkpoint's keys)")
    g.add_argument("--backend", choices=["torch", "jittor"], default="torch", help="framework (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda (default: %(default)s)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="model weights' dtype (default: float32 as the official code; bfloat16 with --fast)")
    g.add_argument("--fast", action="store_true",
                   help="PyTorch: bfloat16 weights, TF32, fused attention on layers whose maps are not needed; "
                        "embeddings, null-text and Adam state stay float32 (results differ slightly from the "
                        "official code; default: off, faithful)")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="PyTorch on a GPU: replay the repeated UNet passes as captured CUDA graphs (the eager "
                        "kernels without the host's launch overhead; more reserved memory for the graphs' pool; "
                        "default: on wherever there is a GPU)")
    g.add_argument("--offload-models", action=argparse.BooleanOptionalAction, default=None,
                   help="PyTorch on a GPU: keep the text encoder and the VAE in CPU memory between uses (same "
                        "results; 0.75 GiB lower peak in float32 for a host-to-device copy per use; default: on "
                        "wherever there is a GPU)")
    g.add_argument("--fused-attention", action=argparse.BooleanOptionalAction, default=None,
                   help="PyTorch: compute the layers whose attention maps are not read with fused SDPA (rounds "
                        "differently from the official explicit attention, ~1e-6 a call; much less memory; "
                        "default: on a GPU or with --fast, off on the CPU)")
    g.add_argument("--compile", action="store_true",
                   help="PyTorch: run the UNet's ResNet blocks and feed-forward layers through torch.compile in "
                        "every pass (sampling, ITO, inversion, null-text): fused kernels, faster on a GPU, "
                        "rounding moves slightly; the first image of each batch shape waits minutes for the "
                        "compiler (cached on disk for later runs; default: off)")
    g.add_argument("--static-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="Jittor on a CUDA GPU: record each repeated step once with jittor.vcompiler and replay it "
                        "(UNet passes 10-24%% faster on an H200, results within TF32 rounding; default: on with "
                        "CUDA, off on the CPU, where vcompiler does not build; see docs/jittor.md)")


def _approach_option(text: str):
    from .approaches import parse_option

    try:
        return parse_option(text)
    except SuppressEOTError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _add_method_options(p: argparse.ArgumentParser, real: bool) -> None:
    from .approaches import APPROACHES, DEFAULT, names

    a = p.add_argument_group("approach (SuppressEOT, an ablation, or a baseline to compare with)")
    a.add_argument("--approach", default=DEFAULT, choices=list(APPROACHES), metavar="NAME",
                   help=f"{', '.join(names(kind='real' if real else 'generated'))} (default: %(default)s; "
                        "`suppress-eot approaches` says what each is and where it runs)")
    a.add_argument("--approach-option", action="append", type=_approach_option, default=[], metavar="KEY=VALUE",
                   help="a baseline's setting, over its documented default, e.g. edit_guidance_scale=7 (repeatable; "
                        "`suppress-eot approaches` lists them)")
    g = p.add_argument_group("what to suppress (one run per token group x alpha x tau)")
    g.add_argument("--suppress-tokens", nargs="+", type=_token_group, default=[], metavar="GROUP",
                   help="token index groups, e.g. 4,5 7 (index 0 is the start token; see `suppress-eot tokens`)")
    g.add_argument("--suppress-words", nargs="+", default=[], metavar="WORD",
                   help='words or phrases of the prompt, each one group, e.g. "a beard" glasses')
    own = [g.add_argument("--alpha", nargs="+", type=_finite, default=[1.0],
                          help="SWR strength(s): s *= exp(-alpha*s); -0.001 strengthens (add/replace) (default: 1.0)"),
           g.add_argument("--tau", nargs="+", type=_finite, default=[0.8],
                          help="start SWR and ITO at step (1-tau)*steps, tau in [0, 1] (default: 0.8)")]
    m = p.add_argument_group("method (defaults are the official ones)")
    m.add_argument("--method", default="soft-weight", choices=["soft-weight", "alpha", "beta", "delete", "weight"],
                   help="SWR variant (default: %(default)s)")
    m.add_argument("--iterations", type=int, default=10, help="ITO gradient steps per step; 0 disables ITO "
                                                             "(default: %(default)s)")
    m.add_argument("--max-step-to-erase", type=int, default=20,
                   help="ITO runs at steps [(1-tau)*steps, this) (default: %(default)s)")
    m.add_argument("--lambda-retain", type=_finite, default=1.0, help="cross-attention retain loss weight "
                                                                      "(default: %(default)s)")
    m.add_argument("--lambda-erase", type=_finite, default=-0.5, help="cross-attention erase loss weight "
                                                                      "(default: %(default)s)")
    m.add_argument("--lambda-self-retain", type=_finite, default=1.0, help="self-attention retain loss weight "
                                                                           "(default: %(default)s)")
    m.add_argument("--lambda-self-erase", type=_finite, default=-0.5, help="self-attention erase loss weight "
                                                                           "(default: %(default)s)")
    m.add_argument("--step-scale", type=_finite, default=None,
                   help=f"ITO step size (default: {'5 for photos' if real else '20 for generated images'})")
    m.add_argument("--all-heads", action="store_true",
                   help="average all attention heads during ITO (the official code averages only the first half; "
                        "default: off)")
    m.add_argument("--pooled", choices=["keep", "swr"], default="keep",
                   help="SDXL's pooled text embedding: keep the prompt's, or regularize it with the second encoder's "
                        "EOT embeddings (docs/families.md; default: %(default)s)")
    m.add_argument("--ito-blocks", type=_blocks, default=("up", "down", "mid"), metavar="BLOCKS",
                   help="UNet blocks whose attention maps the ITO losses read, a comma list of down, mid, up "
                        "(default: all, as the official code; SDXL without up: ITO's passes end after the mid "
                        "block, faster, but a change of method: docs/families.md)")
    # SuppressEOT's own options and their defaults (argparse keeps a group's actions in _group_actions): a
    # baseline given one of them is told to use --approach-option instead
    p.set_defaults(suppresseot_defaults={action.dest: action.default for action in own + m._group_actions})
    s = p.add_argument_group("sampling")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    s.add_argument("--guidance-scale", type=_finite, default=7.5, help="classifier-free guidance (default: "
                                                                       "%(default)s)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs", help="folder for run directories (default: %(default)s)")
    o.add_argument("--no-progress", action="store_true", help="hide progress bars")
    o.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="suppress-eot",
        description="Suppress (or add, or replace) what a prompt names in Stable Diffusion images: "
                    "SuppressEOT (ICLR 2024) on PyTorch or Jittor.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"suppresseot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)

    gen = sub.add_parser("generate", help="generate an image from a prompt and suppress words of it",
                         description="Generate from PROMPT with SEED; write the original and the suppressed image.")
    gen.add_argument("prompt", help="the text prompt")
    gen.add_argument("--seed", type=int, default=2, help="seed of the initial noise (default: %(default)s, as the "
                                                         "official code)")
    _add_model_options(gen)
    _add_method_options(gen, real=False)

    edit = sub.add_parser("edit", help="suppress words of a photo's caption in the photo",
                          description="Invert IMAGE (centre-cropped to the model's square size: 512x512 for "
                                      "SD v1) and suppress what the prompt names.")
    edit.add_argument("image", help="path of a photo in any format Pillow reads (JPEG, PNG, WebP, TIFF...); "
                                    "EXIF rotation is applied, then it is converted to 8-bit RGB: RGBA keeps its "
                                    "colour channels (transparency dropped, not composited, as the official code "
                                    "does), grayscale, palette and CMYK become RGB, 16-bit grey is rescaled to 8 bits")
    edit.add_argument("--prompt", help="caption of the photo (default: the file name without extension)")
    edit.add_argument("--inversion", choices=["nt", "npi"], default="nt",
                      help="nt: null-text optimization, npi: negative-prompt inversion (default: %(default)s)")
    edit.add_argument("--null-text-steps", type=int, default=10, help="Adam steps per DDIM step (default: "
                                                                      "%(default)s)")
    edit.add_argument("--null-text-epsilon", type=_finite, default=1e-5,
                      help="early stop at loss < epsilon + step*2e-5 (default: %(default)s)")
    _add_model_options(edit)
    _add_method_options(edit, real=True)

    tok = sub.add_parser("tokens", help="print the prompt's token index table",
                         description="Print the index of every CLIP token of PROMPT (what --suppress-tokens takes).")
    tok.add_argument("prompt")
    tok.add_argument("--model", default=None, help="take the tokenizer from this model (default: the CLIP "
                                                   "tokenizer of SD v1 shipped with suppresseot)")
    tok.add_argument("--model-config", default=None, metavar="NAME|DIR",
                     help="config of a single-file --model: sd1, sd2, sd2-base, sdxl or a diffusers folder "
                          "(default: chosen from the checkpoint's keys)")
    tok.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    sub.add_parser("approaches", aliases=["baselines"], help="list the approaches: SuppressEOT, its ablations and the "
                   "baselines it is compared with", description="Every approach --approach (generate, edit) and "
                   "--approaches (batch) take, with what it is, the images, model families and backends it runs "
                   "on, and a baseline's settings (--approach-option).")

    import importlib

    # these modules import only the core at module level (their heavy imports wait for run()), so a
    # command never vanishes from --help for want of an optional package
    for module_name in dict.fromkeys(EXTRA_COMMANDS.values()):
        importlib.import_module(module_name).add_parser(sub)
    return parser


def shipped_tokenizer():
    from .tokens import Tokenizer

    folder = Path(__file__).parent / "data" / "clip-tokenizer"
    return Tokenizer.from_files(folder / "vocab.json", folder / "merges.txt")


def cmd_tokens(args) -> int:
    from .tokens import Tokenizer, token_table
    from .weights import resolve_model

    if args.model:  # that model's tokenizer; with two (SDXL), the second, whose "!" padding the table shows
        from .families import detect_family

        model_dir = resolve_model(args.model, config=args.model_config)
        tokenizer = Tokenizer.from_pretrained(model_dir, detect_family(model_dir).text_encoders[-1].tokenizer)
    else:
        tokenizer = shipped_tokenizer()
    print(token_table(tokenizer, args.prompt).format())
    return 0


def _settings(args):
    from .algorithm.losses import Lambdas
    from .config import SamplingSettings, SuppressionSettings

    lambdas = Lambdas(args.lambda_retain, args.lambda_erase, args.lambda_self_retain, args.lambda_self_erase)
    runs = []
    for alpha, tau in itertools.product(args.alpha, args.tau):
        runs.append(SuppressionSettings(alpha=alpha, tau=tau, method=args.method, iterations=args.iterations,
                                        max_step_to_erase=args.max_step_to_erase, lambdas=lambdas,
                                        step_scale=args.step_scale, all_heads=args.all_heads,
                                        pooled=args.pooled, ito_blocks=args.ito_blocks).validate())
    return runs, SamplingSettings(args.steps, args.guidance_scale).validate()


def _approach(args):
    """The --approach, checked against the kind of image, the backend and its options (the model's family is
    checked once the model folder is known)."""
    from .approaches import get

    approach = get(args.approach).check(kind="real" if args.command == "edit" else "generated", backend=args.backend)
    approach.options(dict(args.approach_option))
    if not approach.is_suppresseot:
        given = [f"--{k.replace('_', '-')}" for k, default in args.suppresseot_defaults.items()
                 if getattr(args, k) != default]
        if given:
            raise SuppressEOTError(f"{' '.join(given)}: SuppressEOT's options, which {approach.name} does not take; "
                                   f"its settings go in --approach-option KEY=VALUE (`suppress-eot approaches`)")
    return approach


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    from .config import InversionSettings
    from .runs import check_writable, save_run
    from .tokens import Tokenizer, resolve_groups, token_table
    from .weights import resolve_model

    runs, sampling = _settings(args)
    approach = _approach(args)  # one line and exit 2 before any work where it cannot run here
    inversion = None
    if args.command == "edit":
        inversion = InversionSettings(args.inversion, args.null_text_steps, args.null_text_epsilon).validate()
        from .images import load_rgb

        load_rgb(args.image)  # fail on a bad image before loading any model
        if args.prompt is None:
            args.prompt = Path(args.image).stem
            _note(f"prompt (from the file name): {args.prompt!r}")
    if not args.suppress_tokens and not args.suppress_words:
        raise SuppressEOTError('name what to suppress with --suppress-tokens 4,5 or --suppress-words "a beard" '
                               '(see `suppress-eot tokens "PROMPT"`)')
    out_dir = check_writable(args.out)
    from .weights import LoRA

    loras = [LoRA.of(item) for item in loras_of(args)]
    model_dir = resolve_model(args.model, loras, args.variant, args.model_config)
    from .families import detect_family

    approach.check(family=detect_family(model_dir).name)  # before the weights load
    tokenizer = Tokenizer.from_pretrained(model_dir)
    table = token_table(tokenizer, args.prompt)
    groups = resolve_groups(tokenizer, table, list(args.suppress_tokens) + list(args.suppress_words))

    from .api import SuppressEOT, load_backend

    backend = load_backend(args.backend, model_dir, args.device, args.dtype, args.fast, cuda_graphs=args.cuda_graphs,
                           offload_models=args.offload_models, fused_attention=args.fused_attention,
                           compile_unet=args.compile, static_graphs=args.static_graphs)
    model = SuppressEOT(backend, tokenizer, model=str(args.model), progress=not args.no_progress,
                        loras=[item.record() for item in loras])
    import shlex

    command = {"command": shlex.join(["suppress-eot"] + args.argv)}
    inverted = None
    if args.command == "edit" and approach.shares_inversion:  # inverted once, edited per group
        _note(f"inverting {args.image} ({'null-text' if inversion.method == 'nt' else 'negative-prompt'} inversion, "
              f"{sampling.num_steps} steps)")
        inverted = model.invert(args.image, args.prompt, inversion, steps=sampling.num_steps,
                                guidance_scale=sampling.guidance_scale)
    cases = list(itertools.product(groups, runs if approach.is_suppresseot else runs[:1]))
    options = dict(args.approach_option)
    for number, (group, settings) in enumerate(cases, 1):
        words = " ".join(table.words[i] for i in group)
        _note(f"[{number}/{len(cases)}] suppressing {group} ({words}) with {approach.name}"
              + (f", alpha {settings.alpha:g}, tau {settings.tau:g}" if approach.is_suppresseot else ""))
        if args.command == "edit":
            result = model.edit(inverted if inverted is not None else args.image, args.prompt, suppress=group,
                                settings=settings, inversion=inversion, steps=sampling.num_steps,
                                guidance_scale=sampling.guidance_scale, approach=approach.name,
                                approach_options=options)
        else:
            result = model.generate(args.prompt, group, seed=args.seed, settings=settings, steps=sampling.num_steps,
                                    guidance_scale=sampling.guidance_scale, approach=approach.name,
                                    approach_options=options)
        path = save_run(result, out_dir, extra=command)
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2), --help and --version (exit 0)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "tokens":
            return cmd_tokens(args)
        if args.command in ("approaches", "baselines"):
            from .approaches import listing

            print(listing())
            return 0
        if args.command in EXTRA_COMMANDS:
            import importlib

            return importlib.import_module(EXTRA_COMMANDS[args.command]).run(args)
        return cmd_run(args)
    except SuppressEOTError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"suppress-eot: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("suppress-eot: interrupted; finished runs are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
