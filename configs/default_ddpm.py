"""Defaults shared by every DDPM config (SSB / score_sde numbers; docs/model.md).

A dataset file imports ``get_default_configs()`` and changes only what differs.
Every field can be overridden on the command line, e.g. ``--config.sampling.method=ddim``.
"""
import ml_collections
from ml_collections import config_dict


def get_default_configs():
  config = ml_collections.ConfigDict()
  config.seed = 42
  config.device = 'auto'  # 'auto' (CUDA when present), 'cuda' or 'cpu'

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1_300_001
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq = 50_000
  training.snapshot_freq_for_preemption = 10_000  # checkpoints-meta/checkpoint.pth
  training.snapshot_sampling = True  # PNG sample grid at each snapshot
  training.snapshot_num_samples = 64
  training.snapshot_sampler = 'ddim'  # sampler for the snapshot grid (EMA weights)
  training.snapshot_num_steps = 100
  training.num_workers = 2
  training.restart_unreadable = False  # True: start over although the workdir's checkpoints do not load
  # Fast paths (BENCHMARKS.md, "U-Net fast paths"); off = the exact fp32 eager step that resumes to the bit.
  training.precision = 'fp32'  # fp32 | bf16 (autocast of forward + loss on CUDA or CPU; weights stay fp32)
  training.compile = False  # torch.compile the U-Net for the training step
  training.tf32 = False  # CUDA only: TF32 matmuls/convolutions while training (never for FID)

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.root = 'data'  # local folder holding the raw files; nothing is ever downloaded
  data.image_size = 32
  data.num_channels = 3
  data.centered = True  # scale to [-1, 1]
  data.random_flip = True
  data.uniform_dequantization = False
  data.num_train = 0  # use only the first n training images (0 = all); for memorization studies
  data.eval_split = 'test'

  config.model = model = ml_collections.ConfigDict()
  model.name = 'ddpm'
  # A diffusers UNet2DModel folder (or a DDPMPipeline / Hugging Face snapshot folder) whose weights replace the
  # workdir's checkpoints in every mode but training (models/diffusers_io.py, docs/diffusers.md); '' = none.
  model.pretrained = ''
  model.variant = 'ssb'  # 'ssb' (the paper's checkpoints) or 'score_sde'
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.resamp_with_conv = True
  model.conditional = True
  model.nonlinearity = 'swish'
  model.normalization = 'GroupNorm'
  model.num_groups = 32  # GroupNorm groups (published models: 32); nf / num_groups = channels per group
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.num_scales = 1000  # T
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.channels_last = False  # NHWC memory format for training and sampling (fp32 outputs agree to ~1e-6)

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'ddim'  # ddpm | ddim | pndm | dpmpp_2m | unipc (samplers.SAMPLERS)
  sampling.num_steps = 10  # n; ddpm with num_steps = t_start + 1 is the full ancestral chain
  sampling.grid = 'late_start'  # late_start (linspace(0, t_c, n)) | uniform | quad | karras | logsnr | trailing
  # (samplers/grids.py, docs/samplers.md "Time grids")
  sampling.init = 'normal'  # normal | gls
  # t_c in [0, T-1], or 'auto': chosen per (sampler, n) from the KL a late start loses and the KL its sampler saves
  # a FieldReference of type object so that --config.sampling.t_start=auto parses
  sampling.t_start = config_dict.FieldReference(999, field_type=object)
  sampling.auto_tc_samples = 32  # t_start='auto': training images whose noised copies measure the network's eps
  sampling.auto_tc_stride = 50  # t_start='auto': candidates are the multiples of this below T-1, and T-1
  sampling.eta = -1.0  # DDIM eta; -1 = the method's own (ddim 0, fast ddpm 1)
  sampling.pndm_variant = 'f-pndm'  # f-pndm (RK warm-up) | s-pndm (2nd order) | plms (diffusers) | plms-euler
  sampling.gls_fit = 'exact'  # exact (streamed moments) | monte_carlo (the paper's fit)
  sampling.gls_rank = 0  # 0 = full covariance; r > 0 = rank-r plus diagonal
  sampling.gls_dtype = 'float64'  # float64 | float32
  sampling.num_samples = 64
  sampling.batch_size = 500
  sampling.checkpoint = -1  # snapshot index to load; -1 = newest
  sampling.export_replace = False  # --mode=export_diffusers may replace WORKDIR/diffusers holding another step
  sampling.stats_dir = 'assets/stats'  # FID stats and late-start moments: {dataset}_{res}_{stats|moments}.npz
  sampling.moments_file = ''  # explicit late-start moments file; '' = stats_dir default, computed if missing

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 500
  evaluate.num_samples = 50_000
  evaluate.methods = ('ddpm', 'ddim', 'pndm')
  evaluate.num_steps = (3, 5, 10)
  evaluate.t_starts = (50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)  # 'auto' adds the rule's cell
  evaluate.cells = ()  # 'method:n' pairs that restrict methods x num_steps (e.g. ('ddim:3', 'ddpm:10')); () = all
  evaluate.grids = ('late_start',)  # the sweep's time grids (samplers/grids.py); every cell runs on each
  evaluate.inception_path = ''  # optional pt_inception-2015-12-05-6726825d.pth
  evaluate.fid_backend = 'auto'  # auto: onnxruntime on CPU if installed, else torch | torch | onnxruntime
  evaluate.kid_subset_size = 1000
  evaluate.precision = 'fp32'  # U-Net in the samplers: fp32 | bf16 autocast (outputs float32); never the FID net
  evaluate.compile = False  # torch.compile the sampling U-Net

  config.analysis = analysis = ml_collections.ConfigDict()
  # --mode=potentials: the potential along cos(a) x1 + sin(a) x2 between two sampling trajectories
  analysis.potential_times = (900, 700, 600, 500, 400, 300, 100)
  analysis.potential_steps = 100  # DDIM steps of the two trajectories
  # --mode=late_start_curve: full ancestral sampler started at t, for t in this grid
  analysis.late_start_ts = (999, 900, 800, 700, 600, 500, 400, 300, 200)
  analysis.late_start_inits = ('normal', 'gls')
  analysis.late_start_samples = 500
  # --mode=memorization: train on the first n training images for n in sizes
  analysis.mem_sizes = (16, 64, 256, 1497)
  analysis.mem_n_iters = 2000
  # Training steps per n, one per mem_sizes entry (() = mem_n_iters for every n): small n need more steps to
  # memorize, and their steps are cheap (batch = min(batch_size, n)).
  analysis.mem_n_iters_per_size = ()
  analysis.mem_num_samples = 200
  analysis.mem_num_steps = 50  # DDIM steps for the model and the optimal denoiser (same seeds)
  # Reproducibility between two independently trained models (memorization: per n; rp_table: full data).
  # Model A = model.nf and config.seed; model B differs in width AND training seed.
  analysis.rp_model_b_nf = 64
  analysis.rp_model_b_seed = -1  # -1 = config.seed + 1
  # --mode=rp_table: RP between full-data models / samplers, all from the same noise (mem_num_samples samples,
  # mem_num_steps DDIM or F-PNDM steps); width = rp_model_b_nf, seed = rp_model_b_seed, variant = the other U-Net
  analysis.rp_table_pairs = ('width', 'seed', 'variant', 'sampler')
  analysis.rp_table_n_iters = 0  # training steps of each full-data model; 0 = mem_n_iters
  analysis.feature_net = 'pixels'  # pixels | inception | path to an SSCD TorchScript file
  analysis.threshold = -1.0  # similarity threshold; -1 = the calibrated default of the feature net
  # SSCD only: False = the raw dot product of SSCD outputs, as the GEN reference (the released SSCD
  # TorchScript models already end with an L2 normalisation); True = L2-normalise them first (docs/gen.md)
  analysis.sscd_normalize = False
  analysis.samples_file = ''  # --mode=mem_score: an npz with key 'samples' (N, C, H, W) in [0, 1]
  # --mode=jacobian_rank
  analysis.jacobian_num_samples = 4
  analysis.jacobian_num_steps = 20
  # --mode=diversity
  analysis.diversity_methods = ('ddim', 'pndm')  # samplers compared, vanilla against gls (best sweep t_c)
  analysis.diversity_steps = (3, 5, 10)  # n of each
  analysis.diversity_num_samples = 2000  # per arm: per-class fractions to about +-0.01
  analysis.classifier_path = ''  # TorchScript classifier ([0,1] NCHW -> logits); '' = train one on the data
  analysis.classifier_epochs = 30
  return config
