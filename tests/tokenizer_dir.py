"""Build a tiny, deterministic Hugging Face tokenizer folder for offline tests.

AIPerf (and anything using ``transformers.AutoTokenizer``) needs a real
tokenizer. The machines this project runs on cannot reach the Hugging Face
Hub, so tests train a small byte-level BPE tokenizer on a built-in English
corpus and save it as a folder that loads offline::

    folder = build_tokenizer_dir(tmp_path / "tok")
    AutoTokenizer.from_pretrained(folder)        # works with no network
    aiperf profile ... --tokenizer /abs/folder   # likewise

The folder holds ``tokenizer.json`` (the trained model),
``tokenizer_config.json`` (``tokenizer_class: PreTrainedTokenizerFast`` plus
the special tokens and a minimal chat template) and
``special_tokens_map.json``. Training takes well under a second and produces
byte-identical files on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN]

VOCAB_SIZE = 600

# A small chat template that writes tools the way real model families do (Qwen 2.5,
# Hermes): with ``tools``, a system turn holding the system message's text and then the
# tool definitions, ahead of every other message; an assistant's tool calls as
# <tool_call> blocks, tool results as <tool_response> blocks. A request without tools or
# tool messages renders as ``<|role|>\ncontent\n`` a message.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|system|>\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\n\n' }}"
    "{%- endif %}"
    "{{- 'You may call these functions:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message.tool_calls %}"
    "{{- '<|assistant|>\n' + message['content'] }}"
    "{%- for call in message.tool_calls %}"
    "{{- '<tool_call>\n{\"name\": \"' + call.function.name + '\", \"arguments\": '"
    " + (call.function.arguments | tojson) + '}\n</tool_call>\n' }}"
    "{%- endfor %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|tool|>\n<tool_response>\n' + message['content'] + '\n</tool_response>\n' }}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)

# A few hundred words of plain English: enough for BPE to learn common merges.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A benchmark measures how fast a
server answers requests, and a prompt is the text a user sends to a language
model. Prefix caching lets an inference server reuse the key and value blocks
of tokens it has already computed for an earlier request that started with the
same text. When many requests share one long system prompt, the cache saves a
great deal of work, and the time to first token falls.
To defeat the cache, put a unique nonce at the very start of every prompt, so
no two requests share their first block. To exercise the cache, give many
requests one shared system prompt padded to an exact number of tokens.
Write a short story about a lighthouse keeper who finds a message in a bottle.
Explain the difference between a process and a thread in simple terms.
Summarize the main causes of the industrial revolution in three sentences.
Translate the following sentence into French: the weather is nice today.
List five healthy breakfast ideas that take less than ten minutes to prepare.
What is the capital of Australia, and why was it chosen over Sydney?
Describe how photosynthesis works to a curious ten year old child.
Give me a recipe for a simple tomato soup with bread on the side.
How do vaccines train the immune system to recognize a virus?
Compose a haiku about autumn leaves falling in a quiet park.
Why is the sky blue during the day and red at sunset?
Suggest a name for a small coffee shop near the university library.
Once upon a time there was a little village at the edge of a great forest.
Every morning the baker opened his shop and the smell of fresh bread filled
the street. Children ran to school, farmers drove their carts to the market,
and the old clock in the square struck seven. In the evening people gathered
by the fountain to talk about the day, the harvest, the rain and the news from
the city. Numbers like one, two, three, four, five, six, seven, eight, nine,
ten, 2024, 2025, 2026, 100, 1000 and 3.14 appear in text as well, together
with punctuation: commas, periods, question marks? exclamation marks! colons:
semicolons; quotes "like this" and (parentheses), hyphens - and slashes / too.
The model reads the tokens, computes attention over them, and writes new
tokens one at a time until it reaches the end of its answer or a length limit.
Throughput is the number of output tokens per second across all requests;
latency is how long a single request takes from start to finish.
"""


def _train() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One line per training "sentence"; training on a fixed list is deterministic.
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tokenizer


def build_tokenizer_dir(path: Path) -> Path:
    """Train the tiny tokenizer and save it as a loadable folder at ``path``.

    Returns the absolute path of the folder (created if missing). The folder
    loads offline with ``transformers.AutoTokenizer.from_pretrained`` and with
    ``aiperf profile --tokenizer FOLDER``.
    """
    folder = Path(path).resolve()
    folder.mkdir(parents=True, exist_ok=True)

    _train().save(str(folder / "tokenizer.json"))

    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        **special,
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
