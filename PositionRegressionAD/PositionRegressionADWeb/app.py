"""The web page of Position Regression AD: a trame-slicer app around ``ViewerSession``.

The page: a head CT (the sample, a scan of the data folder, or an upload), a model bundle with its
model card, device and quality, **Detect anomalies** with progress and Cancel, trame-slicer's quad
view (axial, 3D, sagittal, coronal: the error map over the slices and the skull surface coloured by
error), overlay threshold and opacity, the region scores, jump to the highest error, and downloads
(.mrb scene, error map, scores CSV). The slice and 3D views are Slicer's own MRML views rendered on
the server (trame-slicer); detection and display go through ``ViewerSession``, i.e. through
``PositionRegressionADLib``, as in the Slicer module.

Nothing the page sends is trusted: file names go through ``paths``, uploads through ``uploads``,
device and quality must be among those offered, numbers must be finite. Every failure becomes a
message on the page and the server goes on serving. One browser tab owns the viewer; any other tab
is read-only, its requests refused on the server (``connections``).

It does not parse the command line (``__main__``) and does not compute anything itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
from collections.abc import Callable
from html import escape
from pathlib import Path

from trame.app import TrameApp
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task

from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from PositionRegressionADLib.detection_logic import (
    DEVICES,
    FULL_RESOLUTION_STRIDE,
    PREVIEW_STRIDE,
    DetectionCancelled,
    DetectionLogic,
    DetectionOptions,
)
from PositionRegressionADLib.devices import describe_devices
from PositionRegressionADLib.model_card import model_card_html
from PositionRegressionADLib.process import Progress
from PositionRegressionADLib.results import MAP_KINDS
from PositionRegressionADLib.scene_io import SceneContext
from PositionRegressionADWeb import connections, paths, uploads
from PositionRegressionADWeb.session import ViewerSession
from PositionRegressionADWeb.settings import WebSettings
from ppr.errors import PPRError

LOG = logging.getLogger("PositionRegressionADWeb")
TITLE = "Position Regression AD: anomaly detection in head CT"
QUAD_VIEW = "PPR quad view"
# Slicer's "Four-Up" order; the page lists the views in this order (tests rely on it).
VIEW_ORDER = ("axial", "3d", "sagittal", "coronal")
QUALITY_STRIDES = {"preview": PREVIEW_STRIDE, "full": FULL_RESOLUTION_STRIDE}
POLL_SECONDS = 0.25
UPLOAD_PIECE_BYTES = 4 * 1024 * 1024  # serve/upload.js's pieceBytes
WEB_MODULE = {
    "serve": {"ppr_web": str(Path(__file__).with_name("serve"))},
    "scripts": ["ppr_web/upload.js"],
}


def scene_context_of(slicer_app: SlicerApp) -> SceneContext:
    """The Lib's view of trame-slicer's scene and logics (the volumes logic finds "Colors" there too)."""
    io = slicer_app.io_manager
    return SceneContext(scene=slicer_app.scene, app_logic=slicer_app.app_logic,
                        volumes_logic=slicer_app.volumes_logic, io_logics=(io.remote_io, io.vtk_io_manager_logic))


def quad_view_layout() -> Layout:
    """Axial | 3D over sagittal | coronal, as Slicer's Four-Up layout."""
    views = {"axial": ViewLayoutDefinition.axial_view(), "3d": ViewLayoutDefinition.threed_view(),
             "sagittal": ViewLayoutDefinition.sagittal_view(), "coronal": ViewLayoutDefinition.coronal_view()}
    rows = [Layout(LayoutDirection.Horizontal, [views[name] for name in VIEW_ORDER[i:i + 2]]) for i in (0, 2)]
    return Layout(LayoutDirection.Vertical, rows)


def bytes_of_piece(piece: object) -> bytes:
    """The content of one uploaded piece as trame hands it over (a File turned into a dict)."""
    content = piece.get("content") if isinstance(piece, dict) else None
    if isinstance(content, list):
        content = b"".join(bytes(part) for part in content)
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise uploads.UploadRefusedError("The upload sent something that is not file content: reload the page.")
    return bytes(content)


class PositionRegressionWebApp(TrameApp):
    """The viewer: one scene, one session, one page (see the module docstring).

    Usage::

        app = PositionRegressionWebApp(WebSettings(data_dir=Path("scans")))
        app.server.start(host="127.0.0.1", port=8080, open_browser=False, timeout=0)
    """

    def __init__(self, settings: WebSettings, server=None) -> None:
        super().__init__(server)
        self.settings = settings
        self.data_dir = paths.data_folder(settings.data_dir)
        self._work = tempfile.TemporaryDirectory(prefix="ppr-web-")
        work = Path(self._work.name)
        self.server.enable_module(trame_slicer_module)
        self.server.enable_module(WEB_MODULE)
        # A fresh connection secret per launch, and websocket messages no larger than an upload piece.
        self.guard = connections.ConnectionGuard(
            connections.new_secret(), min(settings.max_upload_bytes, UPLOAD_PIECE_BYTES) + 1_000_000)
        self.server.cli.set_defaults(authKey=self.guard.secret)
        self.server.controller.on_server_bind.add(self.guard.install)

        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(QUAD_VIEW, quad_view_layout())
        self.layout_manager.set_layout(QUAD_VIEW)

        context = scene_context_of(self.slicer_app)
        (work / "runs").mkdir()
        self.session = ViewerSession(context, DetectionLogic(context.scene, work_dir=work / "runs"))
        self.upload = uploads.UploadBuffer(work / "uploads", settings.max_upload_bytes)
        self.downloads_dir = work / "downloads"

        self._register_triggers()
        self._init_state()
        self._build_ui()
        self.server.controller.on_server_ready.add(self._on_ready)
        self.server.controller.on_server_exited.add(self._on_exit)

    # ---- state ------------------------------------------------------------------------------

    def _init_state(self) -> None:
        state = self.state
        state.trame__title = TITLE
        state.has_sample = self.settings.sample_path is not None
        state.input_name = ""
        state.data_file = None
        state.model_choice = ""
        state.device_items = [{"title": {"auto": "Automatic (GPU if there is one)", "cuda": "GPU (CUDA)",
                                         "cpu": "CPU"}[device], "value": device} for device in DEVICES]
        state.device = "auto"
        state.device_line = "Looking for a GPU ..."
        state.quality = "preview"
        state.running = False
        state.progress = 0
        state.progress_message = ""
        state.status_text = ""
        state.status_type = "info"
        state.has_results = False
        state.has_z_map = False
        state.has_position_z_map = False
        state.overlay_threshold = 0.0
        state.threshold_min = 0.0
        state.threshold_max = 1.0
        state.overlay_unit = "mm"
        state.opacity = self.session.overlay_opacity
        state.scores = []
        state.run_details = ""
        state.reliability_warning = ""
        state.download_base = "scan"
        state.upload_limit = uploads.human_size(self.settings.max_upload_bytes)
        state.upload_key = 0
        state[connections.LOCKED_KEY] = ""  # set for a read-only tab only (``connections``)
        self._refresh_lists()
        state.change("model_choice")(self._on_model_choice)
        state.change("overlay_threshold")(self._on_threshold)
        state.change("opacity")(self._on_opacity)

    def _say(self, text: str, kind: str = "info") -> None:
        """The status line under the Detect button (kind: info, success, warning, error)."""
        with self.state:
            self.state.status_text = text
            self.state.status_type = kind

    async def _say_now(self, text: str, kind: str = "info") -> None:
        """Show a status before blocking work, so the page shows it while the server is busy."""
        self._say(text, kind)
        # Let the event loop send the state out (awaiting network_completion here would wait for
        # the very call being handled).
        await asyncio.sleep(0.1)

    def _guarded(self, action: str, work: Callable[[], object]) -> object | None:
        """Run ``work``; any failure becomes the status message and ``None`` is returned."""
        try:
            return work()
        except PPRError as error:
            self._say(str(error), "error")
        except Exception as error:  # the server must keep serving whatever went wrong
            LOG.exception("%s failed", action)
            self._say(f"{action} failed with an internal error ({error!r}). The viewer goes on; "
                      "please report this with the server's log.", "error")
        return None

    def _refresh_lists(self) -> None:
        """List the data folder's scans and model bundles again (files may have come or gone)."""
        listed = self._guarded("Listing the data folder",
                               lambda: (paths.list_scans(self.data_dir), paths.list_bundles(self.data_dir)))
        scans, bundles = listed or ([], [])
        with self.state:
            self.state.scan_items = scans
            default = {"title": f"Default model ({self.settings.model_path.name})", "value": ""}
            self.state.model_items = [default] + [{"title": name, "value": name} for name in bundles]
            if self.state.model_choice not in [item["value"] for item in self.state.model_items]:
                self.state.model_choice = ""
            self.state.model_card = self._model_card(self.state.model_choice)

    # ---- model ------------------------------------------------------------------------------

    def _model_path(self, choice: object) -> Path:
        """The bundle the page chose: "" is the default, anything else a bundle inside the data folder."""
        if choice in ("", None):
            return self.settings.model_path
        return paths.resolve_bundle(self.data_dir, choice)

    def _model_card(self, choice: object) -> str:
        try:
            return model_card_html(self._model_path(choice))
        except PPRError as error:
            return f"<span style='color:#c0392b'>{escape(str(error))}</span>"

    def _on_model_choice(self, model_choice, **_) -> None:
        self.state.model_card = self._model_card(model_choice)

    # ---- loading ----------------------------------------------------------------------------

    def _register_triggers(self) -> None:
        trigger = self.server.trigger
        trigger("ppr_load_sample")(self.load_sample)
        trigger("ppr_load_data_file")(self.load_data_file)
        trigger("ppr_refresh")(self._refresh_lists)
        trigger("ppr_upload_begin")(self.upload_begin)
        trigger("ppr_upload_piece")(self.upload_piece)
        trigger("ppr_upload_end")(self.upload_end)
        trigger("ppr_detect")(self.detect)
        trigger("ppr_cancel")(self.cancel)
        trigger("ppr_jump")(self.jump_to_highest_error)
        trigger("ppr_download_scene")(self.download_scene)
        trigger("ppr_download_error_map")(self.download_error_map)
        trigger("ppr_download_z_map")(self.download_z_map)
        trigger("ppr_download_position_z_map")(self.download_position_z_map)
        trigger("ppr_download_scores")(self.download_scores)

    async def _load(self, path: Path, name: str) -> bool:
        await self._say_now(f"Loading {name} ...")
        volume = self._guarded(f"Loading {name}", lambda: self.session.load_scan(path, name))
        if volume is None:
            return False
        self.slicer_app.display_manager.reset_views()
        self._render_views()
        with self.state:
            self.state.input_name = name
            self.state.download_base = name
            self._clear_results_state()
        self._say(f"Loaded {name}. Choose a model and click Detect anomalies.", "info")
        return True

    async def load_sample(self) -> bool:
        sample = self.settings.sample_path
        if sample is None:
            self._say("This viewer was started without a sample scan.", "error")
            return False
        return await self._load(sample, uploads.display_name(sample.name))

    async def load_data_file(self, name: object) -> bool:
        """Load the scan the page names; the name is checked (inside the data folder, a volume file)."""
        def checked() -> Path:
            path = paths.resolve_scan(self.data_dir, name)
            uploads.check_volume_file(path, str(name))
            return path

        path = self._guarded("Opening the scan", checked)
        if path is None:
            return False
        return await self._load(path, uploads.display_name(path.name))

    def upload_begin(self, name: object, size: object) -> bool:
        if self.session.running:
            self._say("A detection is running: wait for it to finish or cancel it before uploading.", "error")
            return False
        self._say(f"Uploading {uploads.safe_file_name(name)} ...")
        self._guarded("Uploading", lambda: self.upload.begin(name, size))
        if not self.upload.active:
            self._reset_upload_input()
        return self.upload.active

    def upload_piece(self, piece: object, offset: object) -> bool:
        self._guarded("Uploading", lambda: self.upload.add(offset, bytes_of_piece(piece)))
        if not self.upload.active:
            self._reset_upload_input()
        return self.upload.active

    async def upload_end(self) -> bool:
        name = uploads.display_name(self.upload.name)
        path = self._guarded("Uploading", self.upload.finish)
        self._reset_upload_input()
        if path is None:
            return False
        try:
            return await self._load(path, name)
        finally:
            path.unlink(missing_ok=True)  # the scene holds the voxels now

    def _reset_upload_input(self) -> None:
        # A new key makes the page rebuild the file input, which empties it for the next upload.
        with self.state:
            self.state.upload_key += 1

    # ---- detection --------------------------------------------------------------------------

    def _options(self) -> DetectionOptions:
        state = self.state
        if state.device not in DEVICES:
            raise PPRError(f"Unknown device {state.device!r}: choose one from the list.")
        if state.quality not in QUALITY_STRIDES:
            raise PPRError(f"Unknown quality {state.quality!r}: choose preview or full resolution.")
        return self.session.detection_options(self._model_path(state.model_choice), state.device,
                                              QUALITY_STRIDES[state.quality])

    async def detect(self) -> None:
        run = self._guarded("Starting the detection", lambda: self.session.start_detection(self._options()))
        if run is None:
            return
        with self.state:
            self.state.running = True
            self.state.progress = 0
            self.state.progress_message = "Starting the detector ..."
        self._say("Detecting anomalies ...")
        create_task(self._watch_detection())

    def cancel(self) -> None:
        if not self.session.running:
            return
        self._say("Cancelling ...", "warning")
        self._guarded("Cancelling", self.session.cancel_detection)

    def _show_progress(self, updates: list[Progress]) -> None:
        if updates:
            with self.state:
                self.state.progress = round(100 * updates[-1].fraction)
                self.state.progress_message = updates[-1].message

    async def _watch_detection(self) -> None:
        """Poll the run (the Lib's polled usage), then add its results or say why there are none."""
        try:
            while not self.session.detection_finished():
                self._show_progress(self.session.take_progress())
                await asyncio.sleep(POLL_SECONDS)
            self._show_progress(self.session.take_progress())
            await self._say_now("Adding the results to the scene ...")
            results = self.session.finish_detection()
            self._show_results()
            seconds = results.scores.GetTable().GetColumnByName("Seconds").GetValue(0)
            self._say(f"Done in {seconds:.0f} s. The slices go through the most anomalous point; "
                      "the scores are on the right.", "success")
        except DetectionCancelled:
            self._say("Detection cancelled: nothing was added; earlier results, if any, are unchanged.", "warning")
        except PPRError as error:
            self._say(f"Detection failed: {error}", "error")
        except Exception as error:  # the server must keep serving whatever went wrong
            LOG.exception("detection failed")
            self._say(f"Detection failed with an internal error ({error!r}). The viewer goes on; "
                      "please report this with the server's log.", "error")
        finally:
            with self.state:
                self.state.running = False
                self.state.progress_message = ""

    # ---- results ----------------------------------------------------------------------------

    def _clear_results_state(self) -> None:
        self.state.has_results = False
        self.state.has_z_map = False
        self.state.has_position_z_map = False
        self.state.scores = []
        self.state.run_details = ""
        self.state.reliability_warning = ""

    def _show_results(self) -> None:
        low, high = self.session.overlay_range()
        threshold = self.session.overlay_threshold()
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()  # frame the new skull surface
        self._render_views()
        with self.state:
            self.state.has_results = True
            self.state.has_z_map = self.session.results.z_map is not None
            self.state.has_position_z_map = self.session.results.position_z_map is not None
            self.state.overlay_unit = self.session.overlay_unit()
            self.state.threshold_min = min(low, threshold)
            self.state.threshold_max = max(high, threshold)
            self.state.overlay_threshold = threshold  # exactly the Lib's: echoing it back changes nothing
            rows = self.session.score_rows()
            # Figures of the maps (mm, z) go in the table; how the run was made fits on one line under it.
            self.state.scores = [{"label": row.label, "text": row.text(), "unit": row.unit,
                                  "region": row.region or ""} for row in rows if row.unit in MAP_KINDS]
            self.state.reliability_warning = self.session.reliability_warning()
            self.state.run_details = " · ".join(f"{row.label} {row.text()}{' ' + row.unit if row.unit else ''}"
                                                for row in rows if row.unit not in MAP_KINDS)

    def _render_views(self) -> None:
        # Display settings change MRML nodes that trame-slicer's views do not all observe: ask them
        # to render (what trame-slicer's own view helpers do after such a change).
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()

    def _on_threshold(self, overlay_threshold, **_) -> None:
        value = _finite(overlay_threshold)
        if value is None or self.session.results is None or self.session.running:
            return
        self._guarded("Setting the threshold", lambda: self.session.set_overlay_threshold(value))
        self._render_views()

    def _on_opacity(self, opacity, **_) -> None:
        value = _finite(opacity)
        if value is not None:
            self._guarded("Setting the opacity", lambda: self.session.set_overlay_opacity(value))
            self._render_views()

    def jump_to_highest_error(self) -> None:
        point = self._guarded("Jumping to the highest error", self.session.jump_to_highest_error)
        self._render_views()
        if point is not None:
            r, a, s = point
            self._say(f"Slices moved to the highest error, at R {r:.1f}, A {a:.1f}, S {s:.1f} mm.", "info")

    # ---- downloads --------------------------------------------------------------------------

    async def _download(self, what: str, file_name: str, write: Callable[[Path], Path]) -> object | None:
        if self.session.running:
            self._say("A detection is running: download the results when it has finished.", "error")
            return None
        await self._say_now(f"Preparing the {what} ...")
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        target = self.downloads_dir / file_name
        try:
            written = self._guarded(f"Preparing the {what}", lambda: write(target))
            if written is None:
                return None
            content = Path(written).read_bytes()
        finally:
            target.unlink(missing_ok=True)
        self._say(f"The {what} is downloading ({uploads.human_size(len(content))}).", "info")
        return self.server.protocol.addAttachment(content)

    async def download_scene(self):
        return await self._download("scene (.mrb)", "scene.mrb", self.session.write_scene)

    async def download_error_map(self):
        return await self._download("error map", "error_map.nii.gz", self.session.write_error_map)

    async def download_z_map(self):
        return await self._download("z-map", "z_map.nii.gz", self.session.write_z_map)

    async def download_position_z_map(self):
        return await self._download("position z-map", "position_z_map.nii.gz", self.session.write_position_z_map)

    async def download_scores(self):
        return await self._download("scores", "scores.csv", self.session.write_scores_csv)

    # ---- life cycle -------------------------------------------------------------------------

    def _on_ready(self, **_) -> None:
        create_task(self._find_devices())

    async def _find_devices(self) -> None:
        # Finding a GPU imports torch (seconds): do it beside the server, not before it answers.
        line = await asyncio.get_running_loop().run_in_executor(None, _describe_devices)
        with self.state:
            self.state.device_line = line

    def _on_exit(self, **_) -> None:
        if self.session.running:
            self.session.cancel_detection()
        self._work.cleanup()

    # ---- page -------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        # Left: what to detect in and how; right: what came out. Views in between.
        with SinglePageWithDrawerLayout(self.server, width=360) as layout:
            self.ui = layout
            layout.root.theme = "dark"
            layout.title.set_text(TITLE)
            client.Style("html { overflow-y: auto; } .ppr-card { font-size: 0.8rem; line-height: 1.3; }")
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ input_name ? input_name : 'No scan loaded' }}", id="input-name",
                         classes="text-body-2 mr-4")
            with layout.drawer, v3.VContainer(classes="pa-3"):
                v3.VAlert(id="read-only-message", text=(connections.LOCKED_KEY,), type="warning",
                          v_show=(connections.LOCKED_KEY,), density="compact", variant="tonal", classes="ppr-card")
                self._input_panel()
                self._model_panel()
                self._detect_panel()
            with v3.VNavigationDrawer(location="right", permanent=True, width=320), v3.VContainer(classes="pa-3"):
                self._display_panel()
                self._scores_panel()
                self._downloads_panel()
            with layout.content:
                with html.Div(style="height: 100%; display: flex;"):
                    self.layout_manager.initialize_layout_grid(layout)

    @staticmethod
    def _heading(text: str) -> None:
        html.Div(text, classes="text-subtitle-2 font-weight-bold mt-3 mb-1")

    def _input_panel(self) -> None:
        self._heading("Head CT")
        v3.VBtn("Load the sample head CT", id="load-sample", block=True, prepend_icon="mdi-head-outline",
                click="trigger('ppr_load_sample')", disabled=("running || !has_sample",), classes="mb-2")
        with html.Div(classes="d-flex align-center"):
            v3.VSelect(label="Scan in the data folder", id="data-file", items=("scan_items",),
                       v_model=("data_file",), density="compact", hide_details=True,
                       no_data_text="No scans in the data folder")
            v3.VBtn(icon="mdi-folder-open", id="open-data-file", variant="text", title="Open",
                    click="trigger('ppr_load_data_file', [data_file])", disabled=("running || !data_file",))
            v3.VBtn(icon="mdi-refresh", variant="text", title="List the data folder again",
                    click="trigger('ppr_refresh')")
        v3.VFileInput(label=("`Upload a scan (.nii.gz, .nrrd, .mha; at most ${upload_limit})`",),
                      id="upload-input", accept=".nii,.gz,.nrrd,.mha", density="compact", hide_details=True,
                      prepend_icon="mdi-upload", disabled=("running",), classes="mt-2", key=("upload_key",),
                      change="window.pprUpload($event.target)")

    def _model_panel(self) -> None:
        self._heading("Model")
        v3.VSelect(id="model-select", items=("model_items",), v_model=("model_choice",), density="compact",
                   hide_details=True, disabled=("running",))
        html.Div(v_html=("model_card",), id="model-card", classes="ppr-card mt-1 text-medium-emphasis")
        self._heading("Device and quality")
        v3.VSelect(id="device-select", items=("device_items",), v_model=("device",), density="compact",
                   hide_details=True, disabled=("running",))
        html.Div("{{ device_line }}", id="device-line", classes="ppr-card mt-1 text-medium-emphasis")
        with v3.VRadioGroup(v_model=("quality",), id="quality", density="compact", hide_details=True,
                            disabled=("running",)):
            v3.VRadio(label="Preview (every 4th voxel, quick)", value="preview")
            v3.VRadio(label="Full resolution (slow without a GPU)", value="full")

    def _detect_panel(self) -> None:
        with html.Div(classes="d-flex mt-2"):
            v3.VBtn("Detect anomalies", id="detect-button", color="primary", classes="flex-grow-1 mr-2",
                    prepend_icon="mdi-magnify-scan", click="trigger('ppr_detect')",
                    disabled=("running || !input_name",), loading=("running",))
            v3.VBtn("Cancel", id="cancel-button", click="trigger('ppr_cancel')", disabled=("!running",))
        # The detector reports no fraction while it registers: the bar moves to show it is working.
        v3.VProgressLinear(id="progress-bar", model_value=("progress",), indeterminate=("progress === 0",),
                           v_show=("running",), height=8, color="primary", classes="mt-2")
        html.Div("{{ progress_message }}", id="progress-message", v_show=("running",), classes="ppr-card mt-1")
        v3.VAlert(id="status-message", text=("status_text",), type=("status_type",), v_show=("status_text",),
                  density="compact", variant="tonal", classes="mt-2 ppr-card")

    def _display_panel(self) -> None:
        self._heading("Error overlay")
        with html.Div(classes="d-flex align-center"):
            v3.VSlider(id="threshold-slider", label="Threshold", v_model=("overlay_threshold",),
                       min=("threshold_min",), max=("threshold_max",), step=0.1, density="compact",
                       hide_details=True, disabled=("!has_results || running",))
            html.Div("{{ Number(overlay_threshold).toFixed(1) }} {{ overlay_unit }}", id="threshold-value",
                     classes="ppr-card text-right", style="width: 5.5em; white-space: nowrap")
        with html.Div(classes="d-flex align-center"):
            v3.VSlider(id="opacity-slider", label="Opacity", v_model=("opacity",), min=0, max=1, step=0.05,
                       density="compact", hide_details=True)
            html.Div("{{ Math.round(100 * opacity) }} %", id="opacity-value", classes="ppr-card text-right",
                     style="width: 5.5em; white-space: nowrap")
        v3.VBtn("Jump to the highest error", id="jump-button", block=True, prepend_icon="mdi-target",
                click="trigger('ppr_jump')", disabled=("!has_results",), classes="mt-1")

    def _scores_panel(self) -> None:
        self._heading("Scores")
        # The out-of-depth check: the scores below are not to be trusted for this scan.
        v3.VAlert(id="reliability-warning", text=("reliability_warning",), type="warning",
                  v_show=("reliability_warning",), density="compact", variant="tonal", classes="mb-2 ppr-card")
        with v3.VTable(id="scores-table", density="compact", classes="ppr-card"):
            with html.Tbody():
                with html.Tr(v_for="row in scores", key="row.label", raw_attrs=[':data-region="row.region"']):
                    html.Td("{{ row.label }}", classes=("row.region ? 'font-weight-bold' : ''",))
                    html.Td("{{ row.text }} {{ row.unit }}", classes="score-value text-right")
                with html.Tr(v_if=("!scores.length",)):
                    html.Td("No results yet.", colspan=2, classes="text-medium-emphasis")
        html.Div("{{ run_details }}", id="run-details", classes="ppr-card mt-1 text-medium-emphasis")

    def _downloads_panel(self) -> None:
        self._heading("Download the results")
        # (element id, text, trigger, file name suffix, shown only when this state is true)
        downloads = (("download-scene", "Scene .mrb", "ppr_download_scene", "'.mrb'", None),
                     ("download-error-map", "Error map", "ppr_download_error_map", "'_error_map.nii.gz'", None),
                     ("download-z-map", "z-map", "ppr_download_z_map", "'_z_map.nii.gz'", "has_z_map"),
                     ("download-position-z-map", "PPR position error", "ppr_download_position_z_map",
                      "'_position_z_map.nii.gz'", "has_position_z_map"),
                     ("download-scores", "Scores CSV", "ppr_download_scores", "'_scores.csv'", None))
        with html.Div(classes="d-flex flex-wrap"):
            for element_id, text, name, suffix, shown_when in downloads:
                only_when = {"v_show": (shown_when,)} if shown_when else {}
                v3.VBtn(text, id=element_id, size="small", variant="outlined", classes="mr-1 mb-1",
                        prepend_icon="mdi-download", disabled=("!has_results || running",), **only_when,
                        click=f"utils.download(download_base + {suffix}, trigger('{name}'), "
                              "'application/octet-stream')")


def _describe_devices() -> str:
    try:
        return describe_devices()
    except Exception as error:  # a broken driver must not stop the viewer
        return f"Could not look for a GPU ({error!r}): detection may run on the CPU."


def _finite(value: object) -> float | None:
    """A number the page sent, or ``None`` when it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
