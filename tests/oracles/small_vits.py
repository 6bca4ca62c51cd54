"""Two small ViT configs (a GELU MLP and a SwiGLU one) that the export tests build models from."""

#: config overrides of `DINOv3ViTConfig`, by MLP kind
VITS = {
    "plain": dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_register_tokens=4),
    "gated": dict(
        hidden_size=128, intermediate_size=192, num_attention_heads=2, num_register_tokens=4, use_gated_mlp=True,
        hidden_act="silu",
    ),
}  # fmt: skip
