"""Where a patched training step waits for the GPU: one fwd+bwd+AdamW step of issue 16's Llama shape
(2 layers) under ``torch.cuda.set_sync_debug_mode("warn")``, each synchronizing call printed once
with the innermost frames of ours / transformers / torch that led to it:

    PYTHONPATH=src python scripts/gpu/sync10_probe.py [hf|ours]
"""

import sys
import traceback
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PROVIDER = sys.argv[1] if len(sys.argv) > 1 else "ours"
if PROVIDER == "ours":
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama()
config = LlamaConfig(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=32,
    num_key_value_heads=8, tie_word_embeddings=False,
)  # fmt: skip
config._attn_implementation = "sdpa"
model = LlamaForCausalLM(config).cuda().to(torch.bfloat16).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
ids = torch.randint(0, config.vocab_size, (4, 2048), device="cuda")
for _ in range(2):  # warm-up: first-call work (autotune, caches) is not what a step waits on
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
torch.cuda.synchronize()
seen = {}


def on_warning(message, category, filename, lineno, file=None, line=None):
    stack = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
    key = tuple((f.filename, f.lineno) for f in stack[-4:])
    if key not in seen:
        seen[key] = str(message).splitlines()[0][:120]
        print(f"-- sync: {seen[key]}")
        for f in stack[-7:]:
            print(f"   {f.filename.split('site-packages/')[-1].split('/src/')[-1]}:{f.lineno} {f.name}")


warnings.showwarning = on_warning
torch.cuda.set_sync_debug_mode("warn")
model(input_ids=ids, labels=ids).loss.backward()
opt.step()
opt.zero_grad(set_to_none=True)
torch.cuda.set_sync_debug_mode("default")
print(f"{PROVIDER}: {len(seen)} distinct synchronizing call sites in one step")
