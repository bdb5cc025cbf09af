"""FAF-Net's options: the one file to open and edit to choose the dataset, the fold, the data
paths, the schedule, the evaluation and the model.

train.py, test.py, script/train.sh, script/evaluate.sh and the console scripts (fafnet-train,
fafnet-evaluate) all start from the defaults below. Edit a line here to change it for every
command, or give an option to one command on the command line:

    python train.py print_config                        # every option and its value
    python train.py with CHAOST2 eval_fold=1 device=cuda
    python test.py with CHAOST2 eval_fold=1 checkpoint=runs/train/1
    python train.py with model_options.icm=False        # one of the model's own options

The defaults are the authors' scripts for SABS: setting 1, 42000 steps of SGD (lr 1e-3,
momentum 0.9, weight decay 5e-4, x0.98 every 3000 steps), a snapshot every 6000 steps, seed
2025, support volume 2 of the fold. docs/options.md explains each option. These are Sacred
config scopes: a value computed from others here (data_dir, image_size, test_classes,
supervoxel_min_size) follows them unless it is given itself. A named config (below the
defaults) sets several options at once: `with CHAOST2`, `with adnet`. The file imports no
torch, so print_config answers at once. Another copy of it is used with FAFNET_CONFIG=<path>.
"""
from fafnet.cli.defaults import (cached_pretrained_weights, dataset_dir, dataset_image_size,
                                 dataset_supervoxel_min_size, dataset_test_classes, default_num_workers)


def cfg():
    """The defaults: the authors' scripts for SABS."""
    # ---- data and protocol (docs/protocol.md sections 9 to 11)
    dataset = 'SABS'                  # SABS, CHAOST2, CMR, Prostate_MRI or SYNTHETIC (also a named config)
    data_root = './data_processed'    # the pre-processed datasets, one folder each
    data_dir = dataset_dir(data_root, dataset)  # this dataset's folder: <data_root>/<its folder name>
    n_volumes = None                  # volumes in data_dir (None: the dataset's known count, checked)
    resample_in_plane = None          # [H, W]: volumes resampled in-plane to it when read (None: as stored)
    image_size = resample_in_plane or dataset_image_size(dataset)  # [H, W] that the network sees
    eval_fold = 0                     # the fold held out and evaluated, 0 to 4
    folds = [0, 1, 2, 3, 4]           # the folds script/train.sh and script/evaluate.sh run
    setting = 1                       # 1: test classes may appear in training; 2: their slices are removed
    setting2_protocol = 'release'     # setting 2's rule: release (slices with all test classes), any or groups
    group = None                      # groups protocol: the class group held out and tested, 0 or 1
    test_classes = dataset_test_classes(dataset, setting, setting2_protocol, group)  # the classes evaluated

    # ---- training episodes (docs/protocol.md section 9)
    n_shot = 1                        # support slices per episode
    use_gt = False                    # False: self-supervised pseudo-labels (the paper); True: ground truth
    pseudo_labels = 'supervoxels'     # supervoxels (3D, the paper) or superpixels (SSL-ALPNet's 2D ones)
    supervoxel_min_size = dataset_supervoxel_min_size(dataset)  # which supervoxels_<N>/ folder to read
    superpixel_min_size = 400         # which superpixels_<N>/ folder to read (pseudo_labels='superpixels')
    min_size = 200                    # minimum foreground pixels of an episode's first two slices
    augment = True                    # gamma, affine and elastic augmentation
    max_iters_per_load = 3000         # episodes per epoch (recorded; an episode depends on seed and step only)

    # ---- model (docs/models.md)
    model = 'fafnet'                  # fafnet, adnet or ssl_alpnet
    model_options = {}                # the model's own options over its defaults, e.g. {'icm': False}
    pretrained_weights = cached_pretrained_weights()  # ResNet-101 or DeepLabV3 file; 'none': random start
    pretrained_allow_partial = False  # accept a file that lacks some backbone tensors (they keep their init)

    # ---- optimisation (docs/protocol.md section 8)
    n_steps = 42000                   # training steps (episodes)
    optimizer = 'sgd'                 # sgd (the release) or adam
    lr = 1e-3                         # learning rate
    momentum = 0.9                    # SGD's momentum
    weight_decay = 5e-4               # L2 penalty
    lr_step_size = 3000               # the learning rate is multiplied by lr_gamma every this many steps
    lr_gamma = 0.98                   # the factor of each learning-rate step
    lr_milestones = None              # steps where lr_gamma applies (None: every lr_step_size before n_steps)
    grad_clip_norm = None             # clip the gradient norm to this (None: no clipping, the release)
    seed = 2025                       # model initialisation and the episode stream

    # ---- the training run
    snapshot_interval = 6000          # a snapshot (and a point of progress.png) every this many steps
    keep_snapshots = 'weights'        # older snapshots: weights (model only) or none (deleted)
    print_interval = 100              # log the losses every this many steps
    save_initial_snapshot = False     # also keep snapshots/step_0000000.pth: the weights training starts from
    resume = None                     # a training run folder or snapshot to continue
    resume_other_data = False         # resume although the training files differ (recorded)
    num_workers = default_num_workers()  # data-loading processes (0: in the main process)

    # ---- evaluation (docs/protocol.md section 10)
    checkpoint = None                 # a snapshot, training run folder, release checkpoint or 'untrained'
    supp_idx = 2                      # the support volume's position in the fold, or a list of them
    n_part = 3                        # support slices per class, and chunks per query volume
    save_predictions = True           # write the predictions as NIfTI volumes
    save_figures = True               # write one PNG per class
    allow_leakage = False             # evaluate a checkpoint trained on volumes of this fold (recorded)

    # ---- where and how it computes (no result changes beyond floating-point rounding)
    device = 'auto'                   # auto, cpu, cuda, cuda:N or mps
    num_threads = None                # CPU threads of the main process (None: torch's default)
    amp_bf16 = False                  # bf16 autocast (the FFT, probabilities and losses stay float32)
    cudnn_benchmark = True            # CUDA: let cuDNN time its algorithms once per input shape
    channels_last = None              # channels-last weights and inputs (None: on to evaluate on a CPU)
    eval_batch_size = None            # query slices per forward pass (None: the model's own default)
    eval_graphs = False               # CUDA: replay each evaluation predict call from a captured graph
    cuda_graph = False                # CUDA: replay the training step from a captured graph
    compile = None                    # torch.compile of training: None, 'encoder' or 'model'
    runs_dir = 'runs'                 # run folders: <runs_dir>/train/<id> and <runs_dir>/test/<id>


# ---- named configs: `with <name>` sets these options over the defaults (two that set the same
# option cannot be combined).

def SABS():
    """Synapse multi-atlas abdominal CT, 30 volumes (the defaults)."""
    dataset = 'SABS'


def CHAOST2():
    """CHAOS T2-SPIR abdominal MRI, 20 volumes."""
    dataset = 'CHAOST2'


def CMR():
    """MS-CMRSeg bSSFP cardiac MRI, 35 volumes."""
    dataset = 'CMR'


def Prostate_MRI():
    """Cross-institution prostate MRI, 40 volumes."""
    dataset = 'Prostate_MRI'


def SYNTHETIC():
    """The project's synthetic phantom (fafnet-preprocess synthetic)."""
    dataset = 'SYNTHETIC'


def adnet():
    """ADNet (Hansen et al. 2022) with its reference schedule (its main_train.py)."""
    model = 'adnet'
    n_steps = 50000                   # SGD at the defaults' lr, momentum and weight decay
    lr_step_size = 1000
    lr_gamma = 0.95
    max_iters_per_load = 1000


def ssl_alpnet():
    """SSL-ALPNet (Ouyang et al. 2020) with its reference schedule (its config_ssl_upload.py)."""
    model = 'ssl_alpnet'
    n_steps = 100100                  # SGD at the defaults' lr, momentum and weight decay
    lr_step_size = 1000
    lr_gamma = 0.95
    lr_milestones = list(range(1000, 100000, 1000))  # its rule: (i + 1) * 1000 for i < n_steps // 1000 - 1
    max_iters_per_load = 1000
    seed = 1234


def cpu_recipe():
    """Real data on a 2-core CPU (docs/real_data.md): 128 x 128, random start, Adam, 1000 steps.
    Give the model's random-start options too (docs/models.md), for FAF-Net
    model_options.zero_init_residual=True model_options.threshold_head_init_scale=0.05."""
    resample_in_plane = [128, 128]    # every volume resampled in-plane; Dice is computed on this grid
    min_size = 50                     # the area of the release's 200 pixels at 256 x 256
    pretrained_weights = 'none'       # none can be downloaded there
    optimizer = 'adam'
    lr = 2e-4
    n_steps = 1000
    snapshot_interval = 250
    print_interval = 25
    save_initial_snapshot = True      # the untrained baseline


NAMED_CONFIGS = (SABS, CHAOST2, CMR, Prostate_MRI, SYNTHETIC, adnet, ssl_alpnet, cpu_recipe)
