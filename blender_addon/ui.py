"""The "Render Domain A" panel (3D Viewport > Sidebar > Domain A) and its operators.

The settings PropertyGroup is generated from `config.RenderSettings`, so the panel and
`render.py` share one definition; "Render frames" runs the very `render.py` command the panel
shows for cluster jobs. Operators only collect settings and call library functions.
About 420 lines, kept in one module: Blender registers the property group, the preferences, the
operators and the panel together (`BLENDER_CLASSES`), and each operator is a few lines.
"""
from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path

import bpy
import numpy as np

from .config import ConfigError, RenderSettings, parse_resolution, settings_from_panel
from .core.errors import InputError
from .core.seeds import frame_seed
from .engine import configure_cycles
from .jobs import Job, JobError, check_backend_python, render_command
from .pipeline import discover_patients, draw_frame, validate_patients
from .scene import PatientScene

_JOBS: dict[str, Job] = {}  # "render", "train", "translate": at most one of each at a time
_SCENES: dict[str, object] = {}  # Blender scene name -> PatientScene (Python state bpy cannot store)
DIR_FIELDS = {"meshes", "out"}


# ----------------------------------------------------------------------------- settings <-> properties

def _property_for(f):
    meta, kind = f.metadata, f.type if isinstance(f.type, str) else f.type.__name__
    desc = meta["help"]
    if "choices" in meta:
        return bpy.props.EnumProperty(name=f.name.replace("_", " ").title(), description=desc,
                                      items=[(c, c.upper(), "") for c in meta["choices"]], default=f.default)
    if kind == "bool":
        return bpy.props.BoolProperty(name=f.name.replace("_", " ").title(), description=desc, default=f.default)
    if kind == "int":
        return bpy.props.IntProperty(name=f.name.replace("_", " ").title(), description=desc, default=f.default,
                                     min=meta.get("min", -2 ** 31), max=meta.get("max", 2 ** 31 - 1))
    if kind == "float":
        return bpy.props.FloatProperty(name=f.name.replace("_", " ").title(), description=desc, default=f.default,
                                       min=meta.get("min", meta.get("above", -1e9)), max=meta.get("max", 1e9),
                                       precision=meta["digits"])
    return bpy.props.StringProperty(name=f.name.replace("_", " ").title(), description=desc,
                                    default=f.default or "", subtype="DIR_PATH" if f.name in DIR_FIELDS else "NONE")


def settings_from_props(pg) -> RenderSettings:
    values = {}
    for f in fields(RenderSettings):
        v = getattr(pg, f.name)
        if f.name in DIR_FIELDS and v:
            v = bpy.path.abspath(v).rstrip("/\\") or v
        values[f.name] = v
    return settings_from_panel(values)  # floats at the precision the panel shows


def props_from_settings(pg, settings: RenderSettings) -> None:
    for f in fields(RenderSettings):
        v = getattr(settings, f.name)
        setattr(pg, f.name, "" if v is None else v)


def _make_settings_class():
    annotations = {f.name: _property_for(f) for f in fields(RenderSettings)}
    # Panel-only settings: which patient to show, and the hand-off to the backend.
    annotations.update({
        "patient": bpy.props.StringProperty(name="Patient", description="patient folder shown by Build scene "
                                            "(default: the first in Meshes)"),
        "view_counter": bpy.props.IntProperty(name="View", default=0, min=0),
        "real_frames": bpy.props.StringProperty(name="Real frames", subtype="DIR_PATH",
                                                description="folder of real frames for training the translator"),
        "run_dir": bpy.props.StringProperty(name="Run folder", subtype="DIR_PATH",
                                            description="translator run folder (checkpoints, logs)"),
        "train_iterations": bpy.props.IntProperty(
            name="Iterations", default=0, min=0,
            description="train until this iteration (0: max_iter of the translator's config)"),
        "styles": bpy.props.IntProperty(name="Styles", default=5, min=1, description="translations per frame"),
        "backend_args": bpy.props.StringProperty(name="Extra arguments",
                                                 description="appended to backend.train / backend.translate"),
        "status": bpy.props.StringProperty(name="Status"),
        "progress": bpy.props.FloatProperty(name="Progress", min=0, max=1, subtype="FACTOR"),
    })
    return type("LAPSYNTH_PG_settings", (bpy.types.PropertyGroup,), {"__annotations__": annotations})


LAPSYNTH_PG_settings = _make_settings_class()


class LAPSYNTH_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__
    python: bpy.props.StringProperty(name="Project Python", subtype="FILE_PATH",
                                     description="Python of the project's environment (has torch and the backend), "
                                                 "e.g. /path/to/lapsynth/.venv/bin/python")

    def draw(self, context):
        self.layout.prop(self, "python")


def _prefs(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def _backend_python(op, context) -> str | None:
    """The checked project interpreter from the preferences, or None after reporting why not."""
    prefs = _prefs(context)
    python = bpy.path.abspath(prefs.python) if prefs and prefs.python else ""
    try:
        check_backend_python(python)
    except JobError as e:
        op.report({"ERROR"}, str(e))
        return None
    return python


def headless_command(settings: RenderSettings) -> str:
    return "blender -b -P render.py -- " + " ".join(shlex.quote(a) for a in settings.to_args())


# ----------------------------------------------------------------------------- operators

def _validated(op, context) -> RenderSettings | None:
    pg = context.scene.lapsynth
    try:
        s = settings_from_props(pg).validate()
        patients = discover_patients(Path(s.meshes), s.patients)
        validate_patients(Path(s.meshes), patients)
    except InputError as e:
        op.report({"ERROR"}, str(e))
        return None
    return s


class LAPSYNTH_OT_build_scene(bpy.types.Operator):
    """Build the patient's laparoscopic scene in a scene of its own, for inspection"""

    bl_idname = "lapsynth.build_scene"
    bl_label = "Build scene"
    bl_options = {"REGISTER"}

    def execute(self, context):
        pg = context.scene.lapsynth
        try:
            s = settings_from_props(pg).validate()
            patient = pg.patient or discover_patients(Path(s.meshes), s.patients)[0]
            target = bpy.data.scenes.get("Domain A") or bpy.data.scenes.new("Domain A")
            if target != context.scene:  # the new scene carries the same settings
                for f in type(pg).__annotations__:
                    setattr(target.lapsynth, f, getattr(pg, f))
            built = PatientScene(Path(s.meshes) / patient, s.max_tools, scene=target, tissue_look=s.tissue_look,
                                  tool_look=s.tool_look)
        except InputError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        configure_cycles(target, s.samples, s.denoise, s.threads, s.denoise_quality)
        w, h = parse_resolution(s.resolution)
        target.render.resolution_x, target.render.resolution_y = w, h
        _SCENES[target.name] = built
        if context.window is not None:
            context.window.scene = target
        target.lapsynth.patient = patient
        self.report({"INFO"}, f"built {patient}: {', '.join(built.meshes)}")
        return {"FINISHED"}


class LAPSYNTH_OT_new_view(bpy.types.Operator):
    """Re-sample camera, light, tools and materials, and look through the laparoscope"""

    bl_idname = "lapsynth.new_view"
    bl_label = "New random view"

    def execute(self, context):
        built = _SCENES.get(context.scene.name)
        if built is None:
            self.report({"ERROR"}, "build the scene first (Build scene)")
            return {"CANCELLED"}
        pg = context.scene.lapsynth
        s = settings_from_props(pg)
        seed = frame_seed(s.seed, pg.patient or "view", 1_000_000 + pg.view_counter)
        draw = draw_frame(np.random.default_rng(seed), built, s)
        built.pose(draw.camera, draw.light, draw.tools, draw.materials, seed, draw.retraction)
        view, tools = draw.view, draw.tools
        pg.view_counter += 1
        for area in (context.screen.areas if context.screen else []):
            if area.type == "VIEW_3D":
                area.spaces.active.region_3d.view_perspective = "CAMERA"
        self.report({"INFO"}, f"liver covers about {view['estimate']['liver']:.0%}, gallbladder "
                                    f"{view['estimate']['gallbladder']:.0%}, {len(tools)} tools")
        return {"FINISHED"}


class _JobOperator(bpy.types.Operator):
    """Shared by the long jobs: start a subprocess, poll it from a timer, report the outcome."""

    job_key = ""
    _timer = None

    def make_job(self, context) -> Job | None:
        raise NotImplementedError

    def execute(self, context):
        if _JOBS.get(self.job_key) and _JOBS[self.job_key].returncode is None:
            self.report({"ERROR"}, f"a {self.job_key} job is already running")
            return {"CANCELLED"}
        job = self.make_job(context)
        if job is None:
            return {"CANCELLED"}
        _JOBS[self.job_key] = job.start()
        pg = context.scene.lapsynth
        pg.status, pg.progress = f"{self.job_key}: started", 0.0
        if bpy.app.background:  # no event loop to poll from: wait here
            job.wait()
            return self.finish(context, job)
        self._timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        job = _JOBS[self.job_key]
        running = job.poll()
        pg = context.scene.lapsynth
        p = job.progress
        pg.progress = p.fraction
        pg.status = (f"{self.job_key}: {p.done}/{p.total}, {p.rate:.2f} {p.unit}/s" + (f", ETA {p.eta}" if p.eta else "")
                     if p.total else f"{self.job_key}: {p.last_line[:80]}")
        for area in context.screen.areas if context.screen else []:
            area.tag_redraw()
        if running:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self.finish(context, job)

    def finish(self, context, job: Job):
        pg = context.scene.lapsynth
        if job.returncode == 0:
            pg.status, pg.progress = f"{self.job_key}: finished", 1.0
            self.report({"INFO"}, f"{self.job_key} finished")
            return {"FINISHED"}
        if getattr(job, "cancelled", False) or job.returncode in (130, 143, -2, -15):
            pg.status = f"{self.job_key}: cancelled (resumable)"
            self.report({"WARNING"}, f"{self.job_key} cancelled; run it again to resume")
            return {"CANCELLED"}
        pg.status = f"{self.job_key}: failed"
        self.report({"ERROR"}, job.error)
        return {"CANCELLED"}


class LAPSYNTH_OT_render(_JobOperator):
    """Render the data set with these settings (runs render.py in the background; resumable)"""

    bl_idname = "lapsynth.render"
    bl_label = "Render frames"
    job_key = "render"

    def make_job(self, context):
        s = _validated(self, context)
        if s is None:
            return None
        return Job("render", render_command(s.to_args(), bpy.app.binary_path))


class LAPSYNTH_OT_train(_JobOperator):
    """Train the translator on this data set and the real frames (backend.train, project Python)"""

    bl_idname = "lapsynth.train"
    bl_label = "Train translator"
    job_key = "train"

    def make_job(self, context):
        pg = context.scene.lapsynth
        python = _backend_python(self, context)
        if python is None:
            return None
        if not pg.real_frames or not pg.run_dir:
            self.report({"ERROR"}, "set Real frames and Run folder")
            return None
        out = bpy.path.abspath(pg.out)
        cmd = [python, "-m", "backend.train", "--renders", out, "--real",
               bpy.path.abspath(pg.real_frames), "--out", bpy.path.abspath(pg.run_dir),
               *(["--iterations", str(pg.train_iterations)] if pg.train_iterations else []),
               *shlex.split(pg.backend_args)]
        return Job("train", cmd)


class LAPSYNTH_OT_translate(_JobOperator):
    """Write realistic translations beside the labels with the newest checkpoint (backend.translate)"""

    bl_idname = "lapsynth.translate"
    bl_label = "Translate data set"
    job_key = "translate"

    def make_job(self, context):
        pg = context.scene.lapsynth
        python = _backend_python(self, context)
        if python is None:
            return None
        found = sorted((Path(bpy.path.abspath(pg.run_dir)) / "checkpoints").glob("ckpt_*.pt")) if pg.run_dir else []
        if not found:
            self.report({"ERROR"}, f"no checkpoint in {pg.run_dir or '(Run folder not set)'}/checkpoints")
            return None
        cmd = [python, "-m", "backend.translate", "--checkpoint", str(found[-1]),
               "--data", bpy.path.abspath(pg.out), "--styles", str(pg.styles), *shlex.split(pg.backend_args)]
        return Job("translate", cmd)


class LAPSYNTH_OT_cancel(bpy.types.Operator):
    """Stop the running jobs; finished frames and checkpoints are kept and a re-run resumes"""

    bl_idname = "lapsynth.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        running = [k for k, j in _JOBS.items() if j.returncode is None]
        for k in running:
            _JOBS[k].cancel()
        self.report({"INFO"}, f"cancelled {', '.join(running)}" if running else "nothing running")
        return {"FINISHED"}


class LAPSYNTH_OT_open_preview(bpy.types.Operator):
    """Open the data set's preview sheet (and translation sheet) in an Image Editor"""

    bl_idname = "lapsynth.open_preview"
    bl_label = "Open preview"

    def execute(self, context):
        out = Path(bpy.path.abspath(context.scene.lapsynth.out))
        path = out / "translation_sheet.png"
        path = path if path.exists() else out / "preview.png"
        if not path.exists():
            self.report({"ERROR"}, f"{out / 'preview.png'} does not exist yet: render frames first")
            return {"CANCELLED"}
        image = bpy.data.images.load(str(path), check_existing=True)
        image.reload()
        for area in (context.screen.areas if context.screen else []):
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                break
        else:
            if context.window is not None:
                bpy.ops.render.view_show("INVOKE_DEFAULT")
                for area in context.window_manager.windows[-1].screen.areas:
                    if area.type == "IMAGE_EDITOR":
                        area.spaces.active.image = image
        self.report({"INFO"}, f"opened {path}")
        return {"FINISHED"}


class LAPSYNTH_OT_copy_command(bpy.types.Operator):
    """Copy the equivalent headless command (for a cluster job) to the clipboard"""

    bl_idname = "lapsynth.copy_command"
    bl_label = "Copy headless command"

    def execute(self, context):
        context.window_manager.clipboard = headless_command(settings_from_props(context.scene.lapsynth))
        self.report({"INFO"}, "command copied")
        return {"FINISHED"}


# ----------------------------------------------------------------------------- panel

class LAPSYNTH_PT_render_domain_a(bpy.types.Panel):
    bl_label = "Render Domain A"
    bl_idname = "LAPSYNTH_PT_render_domain_a"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Domain A"

    def draw(self, context):
        pg = context.scene.lapsynth
        layout = self.layout
        col = layout.column(align=True)
        for name in ("meshes", "patient", "out", "resolution", "frames_per_scene", "seed", "samples", "device",
                     "view", "fov_mask", "max_tools", "denoise"):
            col.prop(pg, name)
        box = layout.box()
        box.label(text="More")
        for name in ("patients", "shard", "sequence_length", "fps", "retraction", "min_liver", "min_gallbladder", "max_tool",
                     "max_retries", "tissue_look", "tool_look", "threads", "overwrite"):
            box.prop(pg, name)
        row = layout.row(align=True)
        row.operator("lapsynth.build_scene")
        row.operator("lapsynth.new_view")
        row = layout.row(align=True)
        row.operator("lapsynth.render")
        row.operator("lapsynth.cancel")
        layout.operator("lapsynth.open_preview")
        if pg.status:
            layout.prop(pg, "progress", text=pg.status, slider=True)
        layout.operator("lapsynth.copy_command")
        try:
            layout.label(text=headless_command(settings_from_props(pg))[:120])
        except ConfigError:
            pass
        box = layout.box()
        box.label(text="Translator (project Python in the add-on preferences)")
        for name in ("real_frames", "run_dir", "train_iterations", "styles", "backend_args"):
            box.prop(pg, name)
        row = box.row(align=True)
        row.operator("lapsynth.train")
        row.operator("lapsynth.translate")


BLENDER_CLASSES = (LAPSYNTH_PG_settings, LAPSYNTH_AP_preferences, LAPSYNTH_OT_build_scene, LAPSYNTH_OT_new_view,
           LAPSYNTH_OT_render, LAPSYNTH_OT_train, LAPSYNTH_OT_translate, LAPSYNTH_OT_cancel,
           LAPSYNTH_OT_open_preview, LAPSYNTH_OT_copy_command, LAPSYNTH_PT_render_domain_a)


def register():
    for cls in BLENDER_CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.lapsynth = bpy.props.PointerProperty(type=LAPSYNTH_PG_settings)


def unregister():
    for job in _JOBS.values():  # Blender quits or the add-on goes: stop the jobs, leave no orphan behind
        if job.returncode is None:
            job.cancel()
            job.wait()
    _JOBS.clear()
    _SCENES.clear()
    del bpy.types.Scene.lapsynth
    for cls in reversed(BLENDER_CLASSES):
        bpy.utils.unregister_class(cls)
