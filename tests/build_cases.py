"""Solutions and plausible wrong answers of the "build" exercises (2.5, 3.4, …), written apart from
the notebooks' and course_lib's code; ``test_grading`` runs them with the small exercises'. Each
entry: exercise id -> (check, solution, [(wrong answer, expected part of its message)], untouched stub)."""


import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import grading


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 2.5: Scalar.backward


class _Scalar:
    """The notebook's skeleton: operations record parents and op; subclasses write backward."""

    def __init__(self, data, parents=(), op=""):
        self.data, self.grad, self.parents, self.op, self.exponent = float(data), 0.0, parents, op, None

    def _lift(self, other):
        return other if isinstance(other, _Scalar) else type(self)(other)

    def __add__(self, other):
        other = self._lift(other)
        return type(self)(self.data + other.data, (self, other), "+")

    def __mul__(self, other):
        other = self._lift(other)
        return type(self)(self.data * other.data, (self, other), "*")

    def __pow__(self, k):
        out = type(self)(self.data**k, (self,), "**")
        out.exponent = k
        return out

    def tanh(self):
        return type(self)(math.tanh(self.data), (self,), "tanh")

    def exp(self):
        return type(self)(math.exp(self.data), (self,), "exp")

    def _local(self, tanh_at_input=False, assign=False):
        """Pass this node's gradient to its parents (the chain rule for one node)."""
        def add(parent, value):
            parent.grad = value if assign else parent.grad + value

        if self.op == "+":
            for parent in self.parents:
                add(parent, self.grad)
        elif self.op == "*":
            a, b = self.parents
            add(a, b.data * self.grad)
            add(b, a.data * self.grad)
        elif self.op == "**":
            add(self.parents[0], self.exponent * self.parents[0].data ** (self.exponent - 1) * self.grad)
        elif self.op == "tanh":
            t = math.tanh(self.parents[0].data) if not tanh_at_input else self.parents[0].data
            add(self.parents[0], (1 - t**2) * self.grad)
        elif self.op == "exp":
            add(self.parents[0], self.data * self.grad)

    def _order(self):
        order, seen = [], set()

        def visit(node):
            if id(node) not in seen:
                seen.add(id(node))
                for parent in node.parents:
                    visit(parent)
                order.append(node)

        visit(self)
        return order


class _ScalarRight(_Scalar):
    def backward(self):
        self.grad = 1.0
        for node in reversed(self._order()):
            node._local()


class _ScalarAssign(_Scalar):  # parent.grad = … instead of +=
    def backward(self):
        self.grad = 1.0
        for node in reversed(self._order()):
            node._local(assign=True)


class _ScalarNoOrder(_Scalar):  # recursion: passes a gradient on before all its uses have added to it
    def backward(self):
        self.grad = 1.0

        def push(node):
            node._local()
            for parent in node.parents:
                push(parent)

        push(self)


class _ScalarTanhAtInput(_Scalar):  # 1 - x**2 with x the input, not the output tanh(x)
    def backward(self):
        self.grad = 1.0
        for node in reversed(self._order()):
            node._local(tanh_at_input=True)


class _ScalarNoSeed(_Scalar):  # forgets that d out/d out = 1
    def backward(self):
        for node in reversed(self._order()):
            node._local()


class _ScalarStub(_Scalar):
    def backward(self):
        raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 3.4: MyLinear + MLP; 3.5: run_epoch


class _Linear(nn.Module):
    def __init__(self, fan_in, fan_out, init="uniform"):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        if init == "uniform":
            self.weight = nn.Parameter(torch.empty(fan_out, fan_in).uniform_(-bound, bound))
            self.bias = nn.Parameter(torch.empty(fan_out).uniform_(-bound, bound))
        else:
            self.weight = nn.Parameter(torch.randn(fan_out, fan_in))
            self.bias = nn.Parameter(torch.zeros(fan_out))

    def forward(self, x):
        return x @ self.weight.T + self.bias


def _mlp(init="uniform", relu_last=False, eval_dropout=False):
    class MLP(nn.Module):
        def __init__(self, sizes, dropout=0.0):
            super().__init__()
            self.layers = nn.ModuleList(_Linear(a, b, init) for a, b in zip(sizes[:-1], sizes[1:]))
            self.dropout = nn.Dropout(dropout)
            self.p = dropout

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1 or relu_last:
                    x = torch.relu(x)
                    x = F.dropout(x, self.p, training=True) if eval_dropout else self.dropout(x)
            return x

    return MLP


class _MLPStub(nn.Module):
    def __init__(self, sizes, dropout=0.0):
        super().__init__()
        raise NotImplementedError("Exercise")


def _run_epoch(model, train_loader, val_loader, optimizer, zero=True, weighted=True, eval_mode=True):
    model.train()
    total, count, means = 0.0, 0, []
    for x, y in train_loader:
        if zero:
            optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(y), count + len(y)
        means.append(loss.item())
    if eval_mode:
        model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in val_loader:
            correct, seen = correct + (model(x).argmax(1) == y).sum().item(), seen + len(y)
    return (total / count if weighted else sum(means) / len(means)), correct / seen


# ----------------------------------------------------------------------------------------------
# 4.4: MyMultiHeadAttention; 4.5: MyBlock


def _mha_class(scale="d_head", axis=-1, merge_transposed=True, use_mask=True):
    class MHA(nn.Module):
        def __init__(self, d_model, n_heads):
            super().__init__()
            self.n_heads, self.d_head = n_heads, d_model // n_heads
            self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
            self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

        def forward(self, x, mask=None):
            b, t, d = x.shape
            q, k, v = (p(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
            scores = q @ k.transpose(-2, -1) / {"d_head": math.sqrt(self.d_head), "d_model": math.sqrt(d), "none": 1}[scale]
            if mask is not None and use_mask:
                scores = scores.masked_fill(~mask, float("-inf"))
            context = scores.softmax(axis) @ v
            merged = context.transpose(1, 2).reshape(b, t, d) if merge_transposed else context.reshape(b, t, d)
            return self.out_proj(merged)

    return MHA


class _MHAStub(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        raise NotImplementedError("Exercise")


def _block_class(norm="pre", residual=True, eval_dropout=False, train_dropout=True):
    from course_lib.attention import MultiHeadAttention

    class Block(nn.Module):
        def __init__(self, d_model, n_heads, dropout=0.1):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.attn = MultiHeadAttention(d_model, n_heads)
            self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
            self.dropout, self.p = nn.Dropout(dropout), dropout

        def drop(self, y):
            if eval_dropout:
                return F.dropout(y, self.p, training=True)
            return self.dropout(y) if train_dropout else y

        def forward(self, x, causal=False):
            if norm == "post":
                x = self.ln_1(x + self.drop(self.attn(x, causal=causal)[0]))
                return self.ln_2(x + self.drop(self.mlp(x)))
            a = self.drop(self.attn(self.ln_1(x), causal=causal)[0])
            x = x + a if residual else a
            m = self.drop(self.mlp(self.ln_2(x)))
            return x + m if residual else m

    return Block


def _block_stub():
    class Stub(_block_class()):
        def forward(self, x, causal=False):
            raise NotImplementedError("Exercise")

    return Stub


# ----------------------------------------------------------------------------------------------
# 5.4: MyBertLayer


def _bert_layer_class(post_norm=True, gelu="none", use_mask=True, scale=True):
    class Layer(nn.Module):
        def __init__(self, hidden, heads, intermediate, eps):
            super().__init__()
            self.heads = heads
            for name in ("query", "key", "value", "attn_out"):
                setattr(self, name, nn.Linear(hidden, hidden))
            self.ffn_in, self.ffn_out = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
            self.attn_norm, self.ffn_norm = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)

        def forward(self, x, attention_mask):
            b, t, d = x.shape
            y = x if post_norm else self.attn_norm(x)
            q, k, v = (p(y).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
            scores = q @ k.transpose(-2, -1) / (math.sqrt(d // self.heads) if scale else 1)
            if use_mask:
                scores = scores + (1 - attention_mask[:, None, None, :].float()) * -1e9
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
            if post_norm:
                h = self.attn_norm(x + self.attn_out(context))
                return self.ffn_norm(h + self.ffn_out(F.gelu(self.ffn_in(h), approximate=gelu)))
            h = x + self.attn_out(context)
            return h + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(h)), approximate=gelu))

    return Layer


def _bert_layer_stub():
    class Stub(_bert_layer_class()):
        def forward(self, x, attention_mask):
            raise NotImplementedError("Exercise")

    return Stub


# ----------------------------------------------------------------------------------------------
# 6.4: MyGPT.forward and generate


def _gpt_class(positions=True, last=-1, top_k_mode="largest", crop=True):
    from course_lib.gpt import Block

    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.wte, self.wpe = nn.Embedding(config.vocab_size, config.n_embd), nn.Embedding(config.block_size, config.n_embd)
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.n_embd)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx):
            x = self.wte(idx)
            if positions:
                x = x + self.wpe(torch.arange(idx.shape[1]))
            x = self.drop(x)
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

        @torch.no_grad()
        def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
            for _ in range(max_new_tokens):
                context = idx[:, -self.config.block_size:] if crop else idx
                logits = self(context)[:, last]
                if temperature == 0:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k_mode != "ignored":
                        keep = logits.topk(top_k, -1, largest=top_k_mode == "largest").indices
                        logits = torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
                    nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
                idx = torch.cat([idx, nxt], 1)
            return idx

    return GPT


def _gpt_stub():
    class Stub(_gpt_class()):
        def forward(self, idx):
            raise NotImplementedError("Exercise")

        def generate(self, *args, **kwargs):
            raise NotImplementedError("Exercise")

    return Stub


# ----------------------------------------------------------------------------------------------
# 7.4: fine_tune_loop


def _fine_tune_loop(model, train, val, epochs, lr, warmup_ratio, max_grad_norm, per_epoch=False, clip=True,
                    eval_mode=True):
    from course_lib.finetune import adamw

    optimizer = adamw(model, lr, 0.01)
    total = epochs * len(train)
    warmup = math.ceil(warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for batch in train:
            loss = model(**batch).loss
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            if not per_epoch:
                scheduler.step()
            losses.append(loss.item())
        if per_epoch:
            scheduler.step()
        if eval_mode:
            model.eval()
        total_loss = correct = seen = 0
        with torch.no_grad():
            for batch in val:
                out = model(**batch)
                n = len(batch["labels"])
                total_loss += out.loss.item() * n
                correct += (out.logits.argmax(-1) == batch["labels"]).sum().item()
                seen += n
        history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_loss": total_loss / seen,
                        "val_accuracy": correct / seen})
    return history


# ----------------------------------------------------------------------------------------------
# 8.4: MyLoRALinear


def _lora_class(b_init="zeros", divide=True, freeze=True, merge_scaled=True):
    class LoRA(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base_layer = base
            if freeze:
                base.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r) if b_init == "zeros"
                                       else torch.randn(base.out_features, r))
            self.scaling = alpha / r if divide else alpha
            self.merged = False

        def forward(self, x):
            out = self.base_layer(x)
            return out if self.merged else out + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

        @torch.no_grad()
        def merge(self):
            self.base_layer.weight += (self.scaling if merge_scaled else 1) * self.lora_B @ self.lora_A
            self.merged = True

        @torch.no_grad()
        def unmerge(self):
            self.base_layer.weight -= (self.scaling if merge_scaled else 1) * self.lora_B @ self.lora_A
            self.merged = False

    return LoRA


class _LoRAStub(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 9.4: MyInt8Linear


def _int8_class(rounding=True, per_channel=True, per_token=True, keep_float=False):
    class Int8(nn.Module):
        def __init__(self, linear):
            super().__init__()
            w = linear.weight.detach()
            top = w.abs().amax(dim=1) if per_channel else w.abs().max().expand(w.shape[0])
            self.register_buffer("weight_scale", top.clamp_min(1e-12) / 127)
            q = w / self.weight_scale[:, None]
            q = (torch.round(q) if rounding else q).clamp(-127, 127)
            self.register_buffer("qweight", q if keep_float else q.to(torch.int8))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

        def forward(self, x):
            top = x.abs().amax(dim=-1, keepdim=True) if per_token else x.abs().max().expand(*x.shape[:-1], 1)
            x_scale = top.clamp_min(1e-12) / 127
            q = x / x_scale
            qx = (torch.round(q) if rounding else q).clamp(-127, 127).to(torch.int8)
            acc = qx.to(torch.int32) @ self.qweight.to(torch.int32).T
            out = acc.float() * x_scale * self.weight_scale
            return out if self.bias is None else out + self.bias

    return Int8


class _Int8Stub(nn.Module):
    def __init__(self, linear):
        super().__init__()
        raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 10.4: make_app


def _make_app(forbid=True, min_items=1, strip=True, version=True):
    from typing import Annotated

    from fastapi import FastAPI
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints

    text = Annotated[str, StringConstraints(strip_whitespace=strip, min_length=1, max_length=2000)]

    class Request(BaseModel):
        model_config = ConfigDict(extra="forbid" if forbid else "ignore")
        texts: Annotated[list[text], Field(min_length=min_items, max_length=32)] | text

    def make_app(predictor):
        app = FastAPI()

        @app.post("/predict")
        def predict(request: Request):
            texts = request.texts if isinstance(request.texts, list) else [request.texts]
            rows = predictor(texts)
            body = {"predictions": [{"label": predictor.labels[int(r.argmax())],
                                     "probabilities": dict(zip(predictor.labels, r.tolist()))} for r in rows]}
            if version:
                body["model_version"] = predictor.version
            return body

        return app

    return make_app


# ----------------------------------------------------------------------------------------------
# 11.4: data_parallel_step


def _data_parallel_step(model, x, y, world, lr, reduce="mean", copies=True):
    import copy

    replicas = [copy.deepcopy(model) if copies else model for _ in range(world)]
    for replica, xs, ys in zip(replicas, x.chunk(world), y.chunk(world)):
        F.cross_entropy(replica(xs), ys).backward()
    if reduce != "none" and copies:
        for params in zip(*(r.parameters() for r in replicas)):
            total = sum(p.grad for p in params)
            for p in params:
                p.grad = total / world if reduce == "mean" else total.clone()
    with torch.no_grad():
        for replica in dict.fromkeys(replicas):  # a shared model steps once
            for p in replica.parameters():
                p -= lr * p.grad
    return replicas


BUILD = {
    "2.5": (
        grading.check_scalar_backward,
        _ScalarRight,
        [(_ScalarAssign, "a * a (one value used twice): gradient of a is 1.5, expected 3; a value used twice"),
         (_ScalarNoOrder, "shared sub-expression): gradient of a is"),
         (_ScalarTanhAtInput, "tanh(a): gradient of a is 0.75, expected 0.786448; check the local derivative of tanh"),
         (_ScalarNoSeed, "a lone leaf a (d a/d a = 1): gradient of a is 0, expected 1; backward() must start")],
        _ScalarStub,
    ),
    "3.4": (
        grading.check_mlp_module,
        _mlp(),
        [(_mlp(init="randn"), "the 256→128 layer has a value of size"),
         (_mlp(relu_last=True), "a ReLU follows the last layer too"),
         (_mlp(eval_dropout=True), "two calls on the same input gave different outputs; dropout must be off in eval()")],
        _MLPStub,
    ),
    "3.5": (
        grading.check_run_epoch,
        _run_epoch,
        [(lambda *a: _run_epoch(*a, zero=False), "a loop that never zeroes the gradients"),
         (lambda *a: _run_epoch(*a, weighted=False), "the mean of the batch means"),
         (lambda *a: _run_epoch(*a, eval_mode=False), "call model.eval() before validating")],
        _stub,
    ),
    "4.4": (
        grading.check_multi_head_attention,
        _mha_class(),
        [(_mha_class(scale="none"), "x (2, 5, 8), 2 heads: values differ from the reference; they are what you get "
                                    "when the scores are not divided by √d_head"),
         (_mha_class(scale="d_model"), "divided by √d_model instead of √d_head"),
         (_mha_class(axis=-2), "softmax runs over the query axis"),
         (_mha_class(merge_transposed=False), "merged without transposing"),
         (_mha_class(use_mask=False), "causal mask: values differ from the reference; they are what you get when the mask is ignored")],
        _MHAStub,
    ),
    "4.5": (
        grading.check_transformer_block,
        _block_class(),
        [(_block_class(norm="post"), "post-norm"),
         (_block_class(residual=False), "the residual connections (x + …) are missing"),
         (_block_class(eval_dropout=True), "in eval mode two calls gave different outputs"),
         (_block_class(train_dropout=False), "in train mode two calls gave the same output")],
        _block_stub(),
    ),
    "5.4": (
        grading.check_bert_layer,
        _bert_layer_class(),
        [(_bert_layer_class(post_norm=False), "(pre-norm); BERT is post-norm"),
         (_bert_layer_class(gelu="tanh"), "GELU is the tanh approximation"),
         (_bert_layer_class(use_mask=False), "with padding: values differ from the reference; they are what you get when the padding mask is ignored"),
         (_bert_layer_class(scale=False), "not divided by √d_head")],
        _bert_layer_stub(),
    ),
    "6.4": (
        grading.check_gpt,
        _gpt_class(),
        [(_gpt_class(positions=False), "the position embeddings are left out"),
         (_gpt_class(last=0), "the next token comes from the first position's logits"),
         (_gpt_class(top_k_mode="ignored"), "(top_k=1 is greedy): values differ"),
         (_gpt_class(top_k_mode="smallest"), "top_k=1 on idx (2, 5), 10 new tokens, block_size 8 (top_k=1 is greedy): values differ"),
         (_gpt_class(crop=False), "your code raised IndexError")],
        _gpt_stub(),
    ),
    "7.4": (
        grading.check_fine_tuning_loop,
        _fine_tune_loop,
        [(lambda *a: _fine_tune_loop(*a, per_epoch=True), "the scheduler steps once per epoch"),
         (lambda *a: _fine_tune_loop(*a, clip=False), "the gradient norm is never clipped"),
         (lambda *a: _fine_tune_loop(*a, eval_mode=False), "validation runs with dropout on")],
        _stub,
    ),
    "8.4": (
        grading.check_lora_linear,
        _lora_class(),
        [(_lora_class(b_init="randn"), "lora_B at initialisation must be zero"),
         (_lora_class(divide=False), "the update is scaled by alpha instead of alpha / r"),
         (_lora_class(freeze=False), "requires_grad by parameter name should be"),
         (_lora_class(merge_scaled=False), "the merged update lacks the scaling alpha / r")],
        _LoRAStub,
    ),
    "9.4": (
        grading.check_int8_linear,
        _int8_class(),
        [(_int8_class(rounding=False), "qweight: values differ from the reference; they are what you get when the values are truncated"),
         (_int8_class(per_channel=False), "weight_scale (one per output channel: max |w| / 127): values differ from the reference; they are what you get when one scale serves the whole weight"),
         (_int8_class(per_token=False), "one scale serves the whole batch"),
         (_int8_class(keep_float=True), "qweight must be stored as torch.int8")],
        _Int8Stub,
    ),
    "10.4": (
        grading.check_predict_endpoint,
        _make_app(),
        [(_make_app(forbid=False), "request with an unknown key beside texts: status 200, expected 422 (it was accepted)"),
         (_make_app(min_items=0), "request with an empty list: status 500, expected 422 (a server error"),
         (_make_app(strip=False), "one string instead of a list: prediction 0 must be"),
         (_make_app(version=False), "the response's keys are ['predictions'], expected ['model_version', 'predictions']")],
        _stub,
    ),
    "11.4": (
        grading.check_data_parallel_step,
        _data_parallel_step,
        [(lambda *a: _data_parallel_step(*a, reduce="sum"), "the gradients are summed over the 2 replicas"),
         (lambda *a: _data_parallel_step(*a, reduce="none"), "replica 0 steps on its own shard's gradient only"),
         (lambda *a: _data_parallel_step(*a, copies=False), "the gradients are summed over the 2 replicas")],
        _stub,
    ),
}
