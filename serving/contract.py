"""Names the trainer's exported models and serving's bundle checks must agree on; both sides import them."""

DERIVED_SEP = ":"  # a table feature "<field>:<tag>" is derived by the model from <field>'s ids; serving never feeds it
