"""Train: every hyperparameter of a run, previews of its schedule and augmentations, and the queue button."""

from __future__ import annotations

import streamlit as st

from caltech_core.config import GROUPS, ConfigError, Setting, TrainConfig
from caltech_core.data import dataset
from caltech_core.nets import weights
from caltech_core.nets.architectures import get_spec
from caltech_core.status import Phase
from caltech_core.study import charts, experiments
from dashboard import _datasets, _settings
from dashboard._auth import require_password
from dashboard._estimate import estimate_panel
from dashboard._lrfind import find_lr_panel
from dashboard._manage import TRAIN_FROM
from dashboard._shared import backend_sidebar, data_root, get_manager, get_store, progress_bar
from dashboard._sweep_builder import sweep_builder

BASELINE = "baseline-defaults"


def _apply(cfg: TrainConfig) -> None:
    """Put a config's values into the form widgets."""
    st.session_state.update(_settings.to_widgets(cfg))


def _on_arch() -> None:
    """A newly picked architecture brings its native image size, unless the size was set by hand (the rule of
    `TrainConfig.replace`); the size stays editable below."""
    before = st.session_state.get("train_form", {})
    try:
        old = TrainConfig(arch=before["f_arch"], image_size=before["f_image_size"])
    except (KeyError, ConfigError):  # no earlier form, or a size out of range: treat it as not set by hand
        old = TrainConfig()
    st.session_state["f_image_size"] = old.replace(arch=st.session_state["f_arch"]).image_size


def _on_preset() -> None:
    name = st.session_state["preset"]
    _apply(TrainConfig() if name == BASELINE else experiments.PRESETS[name].configs[0])


def _field(setting: Setting) -> None:
    """One setting's widget, with what only this page knows: the chosen architecture's native size, the
    dataset's classes, the weights panel under the pretrained box."""
    if setting.name == "arch":
        _settings.widget(setting, on_change=_on_arch)
    elif setting.name == "image_size":
        native = get_spec(st.session_state["f_arch"])
        _settings.widget(setting, help_prefix=f"{native.label}'s native size is {native.image_size} (224 in the "
                                              f"study); the shorter side is resized to 1/{native.crop_pct:g} of it "
                                              "first.")
    elif setting.name == "dataset":
        _datasets.dataset_field(setting)
    elif setting.name == "class_names":
        root = data_root()
        chosen = st.session_state.get("f_dataset")
        names = _datasets.class_names(chosen) if chosen else dataset.list_classes(root) if root is not None else []
        _settings.widget(setting, options=sorted({*names, *st.session_state.get("f_class_names", [])}))
    else:
        ticked = _settings.widget(setting)
        if setting.name == "pretrained" and ticked:
            _weights_panel(st.session_state["f_arch"])


def _weights_panel(arch: str) -> None:
    """The ImageNet weights of `arch`: available / will download (size) with a Download button / unavailable."""
    status = weights.weights_status(arch)
    if status.available:
        st.success(status.message)
        return
    if not status.downloadable:
        st.warning(status.message)
        return
    st.info(status.message)
    job = weights.download_of(arch)
    if job is not None and not job.finished:
        _download_progress(arch)
        return
    if job is not None and job.error:
        st.error(job.error)
    if st.button("Download weights", key="download_weights", icon=":material/download:"):
        weights.start_download(arch)
        st.rerun()


@st.fragment(run_every=1.0)
def _download_progress(arch: str) -> None:
    """The background download's bytes, redrawn every second; the whole page reruns when it ends."""
    job = weights.download_of(arch)
    if job is None or job.finished:
        st.rerun()
    progress_bar(Phase.DOWNLOADING, job.done, job.total)


def restore_form() -> None:
    """The form as the user left it (Streamlit forgets widgets of a page once it is left), or a run's settings
    sent by "Load settings into the Train form" / "Retry" on the Monitor page."""
    if "f_arch" not in st.session_state:
        saved = st.session_state.get("train_form")
        if saved:
            st.session_state.update(saved)
        else:
            _apply(TrainConfig())
    if TRAIN_FROM in st.session_state:
        _apply(TrainConfig.from_dict(st.session_state.pop(TRAIN_FROM)))
        st.info(f"Settings loaded from a run: {st.session_state['f_name'] or 'unnamed'}. Edit them and queue the "
                "run.", icon=":material/content_copy:")


def presets() -> int:
    """The preset picker (fills the form), the repeats box and the button queueing a whole preset; returns the
    number of repeats."""
    col_preset, col_repeats, col_queue_preset = st.columns([3, 1, 1], vertical_alignment="bottom")
    preset = col_preset.selectbox(
        "Start from", [BASELINE, *experiments.PRESETS], key="preset", on_change=_on_preset,
        format_func=lambda n: "Study baseline (AlexNet from scratch)" if n == BASELINE
        else f"Preset: {experiments.PRESETS[n].title}",
        help="Fills the form with the preset's first run; the button on the right queues all of its runs.",
    )
    repeats = col_repeats.number_input(
        "Repeats", min_value=1, max_value=100, value=1, step=1, key="repeats",
        help="Queue every run this many times, each with a new seed and a new train/validation split (the "
             "study's numbers are means of 3 runs). The report shows mean ± standard deviation.")
    if preset != BASELINE:
        p = experiments.PRESETS[preset]
        st.caption(f"{p.description} ({len(p.configs)} run(s), feeds {p.study_ref.item}).")
        count = len(p.configs) * repeats
        if col_queue_preset.button(f"Queue all {count} runs" if count > 1 else "Queue it", key="queue_preset"):
            ids = experiments.submit_preset(get_manager(), preset, repeats)
            st.success(f"Queued runs {', '.join(f'#{i}' for i in ids)}.")
    return repeats


def form() -> tuple[TrainConfig | None, ConfigError | None]:
    """Every setting in its section; returns the config they make, or the first problem with them."""
    model_col, opt_col, data_col = st.columns(3)
    for column, group in ((model_col, "model"), (opt_col, "optimisation"), (data_col, "data")):
        with column:
            st.subheader(GROUPS[group])
            for setting in _settings.in_group(group):
                _field(setting)
    with data_col, st.expander(GROUPS["advanced"]):
        for setting in _settings.in_group("advanced"):
            _field(setting)
    st.session_state["train_form"] = {key: value for key, value in st.session_state.items()
                                      if isinstance(key, str) and key.startswith("f_")}
    try:
        return _settings.from_widgets(st.session_state), None
    except ConfigError as exc:
        return None, exc


def time_per_epoch(cfg: TrainConfig) -> dataset.Splits | None:
    """The split sizes and, on request, a timed estimate of an epoch and the run on this device; returns the
    splits."""
    st.subheader("Time per epoch")
    root = data_root()
    splits = None
    if root is not None or cfg.dataset:
        try:
            splits = dataset.Splits.from_config(cfg, root, get_store().home)
        except (ValueError, FileNotFoundError) as exc:  # SplitError, FolderError, a moved folder
            st.warning(str(exc))
    if splits is not None:
        st.caption(f"{len(splits.train)} training, {len(splits.val)} validation, {len(splits.test)} test "
                   f"images in {splits.num_classes} classes.")
    estimate_panel(cfg, splits)
    return splits


def augmentation_preview(cfg: TrainConfig, splits: dataset.Splits | None) -> None:
    """Six training images as the model sees them after this config's augmentations."""
    with st.expander("Augmentation preview: training images as the model sees them", expanded=bool(cfg.augment)):
        if data_root() is None and not cfg.dataset:
            st.info("No dataset found; see the Data page.")
            return
        if st.button("New random draw", key="reshuffle"):
            st.session_state["preview_seed"] = st.session_state.get("preview_seed", 0) + 1
        try:
            from caltech_core.data import imagecache, transforms

            splits = splits or dataset.Splits.from_config(cfg, data_root(), get_store().home)
            picked = splits.train[:: max(1, len(splits.train) // 6)][:6]
            cache = imagecache.ImageCache.build([s.path for s in picked], get_store().cache_dir,
                                                resize_size=cfg.resize_size)
            shown = transforms.preview_images(cache, list(range(len(cache))), cfg, 6,
                                              seed=st.session_state.get("preview_seed", 0))
            for col, img, path in zip(st.columns(6), shown, cache.paths, strict=False):
                col.image(img, caption=f"{path.parent.name}", width="stretch")
        except (ValueError, FileNotFoundError) as exc:
            st.warning(str(exc))


def previews(cfg: TrainConfig) -> None:
    """The learning-rate schedule, the time per epoch and the augmentation preview of a valid config."""
    sched_col, est_col = st.columns([2, 1])
    sched_col.plotly_chart(charts.lr_schedule_figure(cfg), key="lr_preview")
    with est_col:
        splits = time_per_epoch(cfg)
    augmentation_preview(cfg, splits)


def queue_button(cfg: TrainConfig | None, problem: ConfigError | None, repeats: int) -> None:
    """The form's problem, if any, and the button queueing the run (`repeats` times, new seeds and splits)."""
    if problem is not None:
        st.error(f"**{problem.field}**: {problem.message}", icon=":material/error:")
    if not st.button("Queue run" if repeats == 1 else f"Queue {repeats} runs (repeats)", type="primary",
                     icon=":material/play_arrow:", key="queue"):
        return
    if cfg is None:
        st.error(f"Not queued. Fix **{problem.field}**: {problem.message}")
        return
    if cfg.pretrained and not cfg.weights_path:
        status = weights.weights_status(cfg.arch)
        if not (status.available or status.downloadable):  # a run downloads missing weights first
            st.error(f"Not queued: {status.message}")
            return
    # Repeats count the seed and split seed up from the form's.
    ids = [get_manager().submit(c) for c in experiments.repeat_configs([cfg], repeats)]
    st.session_state["last_queued"], st.session_state["last_queued_ids"] = ids[0], ids


def last_queued() -> None:
    """What the queue button queued last, with a link to watch it."""
    if "last_queued" not in st.session_state:
        return
    run_id = st.session_state["last_queued"]
    ids = st.session_state.get("last_queued_ids", [run_id])
    st.success(f"Queued run{'s' if len(ids) > 1 else ''} {', '.join(f'#{i}' for i in ids)}.")
    st.page_link("dashboard/monitor.py", label=f"Watch run #{run_id} in Monitor", icon=":material/monitoring:",
                 query_params={"run": str(run_id)})


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Train a network")
backend_sidebar()
restore_form()
repeats = presets()
cfg, problem = form()
if cfg is not None:
    previews(cfg)
    find_lr_panel(cfg)
queue_button(cfg, problem, repeats)
last_queued()
sweep_builder(cfg)
