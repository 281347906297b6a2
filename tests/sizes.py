"""Network sizes small enough for unit tests, shared by the tests of the role machinery."""

ROLES = {"role_dim": 8, "role_hidden_dim": 8, "state_embed_dim": 8, "attn_dim": 16, "attn_out_dim": 8, "n_heads": 4}
SMALL = {"embed_dim": 16, **ROLES}  # ACORM / ACORM-MAPPO with every role module, small
