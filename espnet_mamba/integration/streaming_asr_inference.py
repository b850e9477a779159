"""Command line: ESPnet's ``asr_inference_streaming`` for causal samba_asr models.

    python -m espnet_mamba.integration.streaming_asr_inference \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.ave.pth \\
        --data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound \\
        --sim_chunk_length 5120 --output_dir exp/decode_streaming

ESPnet's options and outputs (``{n}best_recog/{text,token,token_int,score}``): each utterance is
fed in chunks of ``--sim_chunk_length`` samples (0: the whole utterance as one chunk) to
:class:`~espnet_mamba.integration.streaming_inference.Speech2TextStreaming`.  Options of ESPnet's
block-synchronous search (``--disable_repetition_detection``, ``--encoded_feat_length_limit``,
``--decoder_text_length_limit``) do not apply and are refused when set.  Also written:
``streaming/rtf`` per utterance (processing seconds over audio seconds, summed over its
chunks) and ``streaming/slowest_chunk_seconds`` (the longest call, usually the last one: the
final beam search).  ``partial_recog/{text,token,token_int,score}`` hold the partial result
over all of each utterance's audio (``--partial_search``, CTC alone: what a live display showed
before the final beam search), to score what streaming shows without waiting for the end.

With ``--endpoint_blank_seconds`` / ``--max_utterance_seconds`` (Speech2TextStreaming's
endpointing; off by default) a long recording is decoded as the utterances that endpointing
finds: its n-th best text, tokens and score are those of the utterances' n-th best hypotheses
joined in order (texts with a space), and ``streaming/utterances`` lists their
``start-end`` seconds.
"""

from __future__ import annotations

import logging
import sys

from espnet2.bin.asr_inference_streaming import get_parser as espnet_parser
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.legacy.nets.beam_search import Hypothesis
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from espnet2.legacy.utils.cli_utils import get_commandline_args
from espnet2.tasks.asr import ASRTask
from espnet2.torch_utils.set_all_random_seed import set_all_random_seed

from espnet_mamba.integration.streaming_inference import Speech2TextStreaming

logger = logging.getLogger(__name__)

NOT_APPLICABLE = {"disable_repetition_detection": False, "encoded_feat_length_limit": 0,
                  "decoder_text_length_limit": 0, "word_lm_train_config": None,
                  "word_lm_file": None}


def get_parser():
    parser = espnet_parser()
    parser.description = "Streaming ASR decoding of causal samba_asr models"
    group = parser.add_argument_group("Endpointing")
    group.add_argument("--endpoint_blank_seconds", type=float, default=None,
                       help="end an utterance after this long of CTC blanks after speech")
    group.add_argument("--max_utterance_seconds", type=float, default=None,
                       help="end an utterance once it is this long")
    group = parser.add_argument_group("Partial results (their cost is in streaming/rtf)")
    group.add_argument("--partial_search", default="ctc_prefix",
                       choices=["ctc_prefix", "ctc_best_path"],
                       help="CTC prefix beam search or the CTC best path after each chunk")
    group.add_argument("--partial_beam_size", type=int, default=None,
                       help="prefixes the partial search keeps (default: --beam_size, at most 10)")
    return parser


def join_utterances(parts: list, nbest: int) -> list:
    """The n-best of a recording from those of its utterances, [(text, tokens, token_int,
    hyp)] each: the n-th (or last, if fewer) of each utterance, joined in order."""
    if len(parts) == 1:
        return parts[0]
    joined = []
    for n in range(nbest):
        picks = [p[min(n, len(p) - 1)] for p in parts if p]
        texts = [r[0] for r in picks]
        text = None if any(t is None for t in texts) else " ".join(t for t in texts if t)
        tokens = [t for r in picks for t in r[1]]
        token_int = [t for r in picks for t in r[2]]
        hyp = Hypothesis(score=sum(float(r[3].score) for r in picks), scores={}, states={},
                         yseq=[])
        joined.append((text, tokens, token_int, hyp))
    return joined


def chunks(speech, length: int):
    """Consecutive chunks of ``length`` samples (the last one shorter); the whole if 0."""
    if length <= 0 or len(speech) <= length:
        return [speech]
    return [speech[i:i + length] for i in range(0, len(speech), length)]


def inference(args) -> None:
    given = {k: getattr(args, k) for k in NOT_APPLICABLE if getattr(args, k) != NOT_APPLICABLE[k]}
    if given:
        raise ValueError(f"options of ESPnet's block-synchronous streaming search do not apply "
                         f"to Speech2TextStreaming of causal samba_asr models: {given}; leave "
                         "them unset")
    if args.batch_size != 1:
        raise ValueError(f"--batch_size must be 1 (one utterance at a time), got "
                         f"{args.batch_size}")
    if args.ngpu > 1:
        raise ValueError(f"--ngpu must be 0 or 1, got {args.ngpu}")
    if args.sim_chunk_length < 0:
        raise ValueError(f"--sim_chunk_length must be >= 0 samples, got {args.sim_chunk_length}")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    set_all_random_seed(args.seed)
    s2t = Speech2TextStreaming(
        asr_train_config=args.asr_train_config, asr_model_file=args.asr_model_file,
        lm_train_config=args.lm_train_config, lm_file=args.lm_file,
        token_type=args.token_type, bpemodel=args.bpemodel,
        device="cuda" if args.ngpu else "cpu", maxlenratio=args.maxlenratio,
        minlenratio=args.minlenratio, dtype=args.dtype, beam_size=args.beam_size,
        ctc_weight=args.ctc_weight, lm_weight=args.lm_weight, penalty=args.penalty,
        nbest=args.nbest, normalize_length=args.normalize_length,
        endpoint_blank_seconds=args.endpoint_blank_seconds,
        max_utterance_seconds=args.max_utterance_seconds, partial_search=args.partial_search,
        partial_beam_size=args.partial_beam_size)
    train_args = s2t.asr_train_args
    loader = ASRTask.build_streaming_iterator(
        args.data_path_and_name_and_type, dtype=args.dtype, batch_size=1,
        key_file=args.key_file, num_workers=args.num_workers,
        preprocess_fn=ASRTask.build_preprocess_fn(train_args, False),
        collate_fn=ASRTask.build_collate_fn(train_args, False),
        allow_variable_data_keys=args.allow_variable_data_keys, inference=True)
    fs = getattr(s2t.asr_model.frontend, "logmel", None)
    fs = fs.mel_options["sr"] if fs is not None else 16000
    with DatadirWriter(args.output_dir) as writer:
        for keys, batch in loader:
            key = keys[0]
            speech = batch["speech"][0]
            parts = chunks(speech, args.sim_chunk_length)
            seconds, slowest, utterances, found, partials = 0.0, 0.0, [], [], []
            try:
                for i, part in enumerate(parts):
                    start = s2t.start
                    results = s2t(part, is_final=i == len(parts) - 1)
                    seconds += s2t.last_chunk_seconds
                    slowest = max(slowest, s2t.last_chunk_seconds)
                    for done in s2t.finished:
                        found.append(done.results)
                        partials.append([done.partial])
                        utterances.append((done.start, done.end))
                if results or not found:
                    found.append(results)
                    partials.append([s2t.last_partial])
                    utterances.append((start, len(speech)))
                results = join_utterances(found, args.nbest)
                partial = join_utterances(partials, 1)[0]
            except TooShortUttError as e:
                # as ESPnet's asr_inference: logged, an empty hypothesis, the next utterance
                logger.warning(f"Utterance {key} {e}")
                hyp = Hypothesis(score=0.0, scores={}, states={}, yseq=[])
                results = [[" ", ["<space>"], [2], hyp]] * args.nbest
                partial = results[0]
            # a directory of its own: DatadirWriter compares the ids of sibling files only
            writer["streaming"]["rtf"][key] = f"{seconds / max(len(speech) / fs, 1e-9):.4f}"
            writer["streaming"]["slowest_chunk_seconds"][key] = f"{slowest:.4f}"
            if args.endpoint_blank_seconds or args.max_utterance_seconds:
                writer["streaming"]["utterances"][key] = " ".join(
                    f"{a / fs:.2f}-{b / fs:.2f}" for a, b in utterances)
            for n, result in enumerate(results[:args.nbest], start=1):
                write_result(writer[f"{n}best_recog"], key, result)
            write_result(writer["partial_recog"], key, partial)


def write_result(out, key: str, result) -> None:
    text, token, token_int, hyp = result
    out["token"][key] = " ".join(token)
    out["token_int"][key] = " ".join(map(str, token_int))
    out["score"][key] = str(float(hyp.score))
    if text is not None:
        out["text"][key] = text


def main(cmd=None):
    print(get_commandline_args(), file=sys.stderr)
    args = get_parser().parse_args(cmd)
    inference(args)


if __name__ == "__main__":
    main()
