"""A tiny Llama and a byte-level BPE tokenizer made locally (no hub), for the client runs: the same
weights for a given seed under any transformers version the client environments carry."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "the cat sat on the mat and the dog ate the bone",
    "a quick brown fox jumps over the lazy dog",
    "what is two plus two? four. what is one plus one? two.",
    "good answers are short and kind; bad answers are long and rude",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_tokenizer():
    """Byte-level BPE (any text encodes, no unknown token), about 300 entries."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        show_progress=False,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: Llama's generate refuses them
    )


def tiny_llama(tokenizer, seed=0):
    """2 layers, hidden 32, fp32, untied head (the fused losses read ``lm_head.weight``)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def save_tiny(path, seed=0):
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
