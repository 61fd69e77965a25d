"""Default configuration: SASRec + MoL + sampled softmax, leave-one-out, ML-1M settings.

Every field is overridable from the command line: `--config.train.batch_size=64`.
"""
import ml_collections

from jaxret import metrics


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "ml-1m-half"  # a folder under data_dir; `ml-1m` for the full MovieLens-1M
  c.data_dir = ""  # '' -> $JAXRET_DATA_DIR, else ./data
  c.min_interactions = 5  # iterative k-core on users and items (0 = off)
  c.protocol = "loo"  # 'loo' (paper) or 'ratio' (seed study: 0.7/0.2/0.1 temporal split)
  # ratio only: 'all' (every validation/test interaction is an example) or 'first' (one per
  # user: the first after the cut, as the seed study's 1/450-granular numbers suggest)
  c.ratio_targets = "all"
  c.max_len = 200  # query history length L (most recent items)
  c.seed = 0
  # PRNG behind dropout, negatives and position sampling: 'threefry2x32' (JAX's default; the
  # committed runs used it) or 'rbg' (faster on CPU; bits may differ across backends/shardings)
  c.prng_impl = "threefry2x32"

  # Model: a query encoder and a similarity head, each configured in its own section.
  c.encoder = "sasrec"
  c.head = "mol"
  c.sasrec = ml_collections.ConfigDict(dict(
      dim=50, num_blocks=2, num_heads=1, dropout=0.2, activation="relu"))
  c.svd = ml_collections.ConfigDict(dict(dim=50, trainable=False, normalize_foldin=True))
  c.dot = ml_collections.ConfigDict(dict(normalize=True, temperature=0.05))
  c.mlp = ml_collections.ConfigDict(dict(hidden=(256, 128), dropout=0.1))
  c.fm = ml_collections.ConfigDict(dict(factor_dim=64, dropout=0.0))
  c.neural_fm = ml_collections.ConfigDict(dict(factor_dim=64, hidden=(64,), dropout=0.2))
  c.mol = ml_collections.ConfigDict(dict(
      num_query_components=8, num_item_components=4, component_dim=64, temperature=0.05,
      gating_hidden=128, softmax_dropout=0.2, gating=True, query_hidden=512, item_dropout=0.1))
  c.mol_aux_weight = 0.001  # weight of MoL's load-balancing (mutual information) loss
  # h-indexer: dim > 0 trains stage-1 retrieval embeddings of this size jointly, with an
  # auxiliary sampled-softmax loss on stop-gradient inputs (jaxret.retrieval, MoLIndex).
  c.hindexer_dim = 0
  # Warm start: the workdir of a finished run (e.g. a fast dot run) whose best checkpoint's
  # query encoder (with the item embeddings) initialises this run's; the head starts fresh.
  c.init_from = ""
  # With init_from a dot run (l2-normalised) and a MoL head with linear projections
  # (mol.query_hidden=0): every MoL component starts as the zero-padded input, so each of the P
  # logits is the dot run's cos(q, i) / tau and the MoL score equals the dot head's at step 0.
  c.init_head_as_dot = False

  # Loss and negatives.
  c.loss = "ss"  # 'bce', 'ss' (sampled softmax) or 'softmax' (full, small catalogs)
  c.num_negatives = -1  # -1: the loss's default (bce 127, ss 128)
  c.bce_negatives = "sum"  # bce: 'sum' the R negatives' terms (SASRec) or take their 'mean'
  c.shared_negatives = True  # one (R,) negative set per step for all positions, else per position

  # Optimisation.
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global batch (sequences); must divide by the device count
  c.train.epochs = 200  # upper bound; early stopping usually ends the run sooner
  c.train.learning_rate = 1e-3
  c.train.weight_decay = 0.0  # AdamW decoupled weight decay
  c.train.warmup_steps = 0
  # Cosine decay of the learning rate to learning_rate * lr_final_ratio over this many epochs
  # after warm-up (0 = constant). Set train.epochs to match to end the run where it bottoms out.
  c.train.lr_decay_epochs = 0
  c.train.lr_final_ratio = 0.0
  c.train.grad_clip = 1.0  # global-norm clipping (0 = off)
  # Encoder updates (item embeddings included) scaled by encoder_lr_scale, and zero for the
  # first freeze_encoder_epochs epochs: for a fresh head on a warm-started encoder (init_from).
  c.train.encoder_lr_scale = 1.0
  c.train.freeze_encoder_epochs = 0
  c.train.num_devices = 0  # 0 = all visible devices
  # Fraction of the B*L positions whose targets are scored per step: real (non-padding)
  # positions first, a random subset of them if they don't fit. 1.0 = all (exact).
  c.train.position_budget = 1.0
  # Score the selected positions this many at a time (lax.map + jax.checkpoint; 0 = all at
  # once; -1 = auto: 32 for MoL, else 0). Keeps the head's (chunk, R, ...) intermediates
  # small and recomputes them in the backward pass: ~2x faster for MoL on CPU.
  c.train.score_chunk = -1
  # Training batches cut to length buckets, e.g. (64, 128, 200) (clipped to max_len): each
  # batch holds users of one bucket and is L_b long, so short histories skip most of the
  # O(L^2) attention over padding. One compiled step per bucket. () = off (every batch L).
  c.train.length_buckets = ()

  # Evaluation and early stopping.
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.every_epochs = 1
  c.eval.metric = "ndcg@10"  # validation metric for early stopping and the best checkpoint
  c.eval.patience = 10  # evaluations without improvement before stopping (0 = never stop)
  c.eval.ks = (1, 10, 50, 200, 500)
  c.eval.exclude_history = True  # drop items of the query's history from the ranking
  # Items scored at once in full ranking; -1 = per head (train.eval_chunk_size).
  c.eval.chunk_size = -1
  # Full ranking keeps a batch's (B, N) scores when they fit in this many elements (each item
  # scored once); above it every chunk is scored twice (target scores, then ranks).
  c.eval.max_buffered_scores = metrics.MAX_BUFFERED_SCORES
  c.eval.max_valid_examples = 0  # 0 = all; else a fixed random subset for validation
  # 0 = full ranking; S > 0 = the expected metrics of ranking each target against S
  # uniformly sampled candidates instead (an older protocol; exact, no sampling noise).
  c.eval.sampled_negatives = 0
  return c
