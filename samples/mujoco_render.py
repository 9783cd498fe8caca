"""Headless MuJoCo rendering for the sample generators: RGB, metric depth, body segmentation and cameras.
Conventions and llvmpipe tuning: docs/samples.md#mujoco-render."""

from __future__ import annotations

import atexit
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Rendering must be headless; respect a caller's choice but default to EGL (works on CPU via Mesa).
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import mujoco  # noqa: E402  (must come after MUJOCO_GL is set)
import numpy as np  # noqa: E402

# MuJoCo camera axes (x right, y up, looking along -z) -> OpenCV axes (x right, y down, z forward).
_MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass
class CameraFrame:
    """Everything rendered for one camera at one instant."""

    rgb: np.ndarray | None  # uint8 [H, W, 3]
    depth: np.ndarray | None  # float32 [H, W], metres along the optical axis
    segmentation: np.ndarray | None  # int32 [H, W], body id, -1 where no geom was hit
    intrinsics: np.ndarray  # float64 [3, 3]
    world_to_camera: np.ndarray  # float64 [4, 4], OpenCV axes


def camera_intrinsics(model: mujoco.MjModel, cam_id: int, height: int, width: int) -> np.ndarray:
    """OpenCV-style K for a fovy-specified MuJoCo camera rendered at height x width."""
    if model.cam_sensorsize[cam_id].any():
        # Cameras specified through sensorsize/focal use a different frustum; none of our models have them.
        raise NotImplementedError("cameras defined by sensorsize/focal are not supported")
    fovy = np.deg2rad(model.cam_fovy[cam_id])
    f = 0.5 * height / np.tan(0.5 * fovy)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def camera_extrinsics(data: mujoco.MjData, cam_id: int) -> np.ndarray:
    """World->camera 4x4 transform in OpenCV axes, from the camera pose computed by the last mj_forward."""
    r_world_cam = data.cam_xmat[cam_id].reshape(3, 3) @ _MJ_TO_CV  # columns: OpenCV axes in world coords
    t = np.asarray(data.cam_xpos[cam_id], dtype=np.float64)
    w2c = np.eye(4)
    w2c[:3, :3] = r_world_cam.T
    w2c[:3, 3] = -r_world_cam.T @ t
    return w2c


def cam2world_gl(world_to_camera_cv: np.ndarray) -> np.ndarray:
    """Camera->world 4x4 in OpenGL axes (x right, y up, z backward), from an OpenCV world->camera."""
    c2w = np.linalg.inv(world_to_camera_cv)
    c2w[:3, :3] = c2w[:3, :3] @ _MJ_TO_CV  # flip y and z back to the GL convention
    return c2w


class SimCamera:
    """A headless renderer of fixed size for one MuJoCo model; renders any of its named cameras.

    Args:
        model: the MjModel; its ``vis.quality.offsamples`` is set to 0 (no MSAA) as a side effect, and its
            offscreen buffer is enlarged when the requested size does not fit.
        height, width: image size in pixels.
        geom_groups: geom groups to draw (default: MuJoCo's default 0, 1, 2; collision meshes usually sit
            in group 3).
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int, geom_groups: tuple[int, ...] = (0, 1, 2)):
        self.model = model
        self.height, self.width = int(height), int(width)
        model.vis.quality.offsamples = 0  # MSAA costs ~1.5x on llvmpipe and blurs segmentation edges anyway
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        self._renderer = mujoco.Renderer(model, self.height, self.width)
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0
        self._option.geomgroup[:] = 0
        for g in geom_groups:
            self._option.geomgroup[g] = 1
        self._geom_bodyid = np.asarray(model.geom_bodyid, dtype=np.int32)
        # One-draw depth + segmentation needs these Renderer internals; fall back to two draws without them.
        self._fused_ok = all(hasattr(self._renderer, a) for a in ("_rect", "_mjr_context", "_gl_context"))
        self._id_buf = np.empty((self.height, self.width, 3), np.uint8)
        self._depth_buf = np.empty((self.height, self.width), np.float32)
        self._geom_groups = tuple(geom_groups)
        self._other_sizes: dict[tuple[int, int], SimCamera] = {}

    def sized(self, height: int, width: int) -> SimCamera:
        """This camera's twin at another image size (made on first use, closed with this one)."""
        key = (int(height), int(width))
        if key == (self.height, self.width):
            return self
        if key not in self._other_sizes:
            self._other_sizes[key] = SimCamera(self.model, *key, geom_groups=self._geom_groups)
        return self._other_sizes[key]

    def camera_id(self, name: str) -> int:
        cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cam_id < 0:
            names = [self.model.camera(i).name for i in range(self.model.ncam)]
            raise ValueError(f"camera {name!r} not in model; available: {names}")
        return cam_id

    def intrinsics(self, camera: str) -> np.ndarray:
        return camera_intrinsics(self.model, self.camera_id(camera), self.height, self.width)

    def render(
        self,
        data: mujoco.MjData,
        camera: str,
        rgb: bool = True,
        depth: bool = True,
        segmentation: bool = True,
    ) -> CameraFrame:
        """Render the requested channels for ``camera`` from ``data``'s current kinematics.

        ``data`` must be consistent (call ``mj_forward`` after changing qpos, or after ``mj_step``, whose
        positions lag one substep behind qpos), because the scene is built from xpos/xmat/cam_xpos.
        """
        cam_id = self.camera_id(camera)
        r = self._renderer
        r.update_scene(data, camera=cam_id, scene_option=self._option)
        # Flags live on the scene and update_scene does not reset them, but set them every time to be safe.
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # shadows cost ~10x on llvmpipe
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        out_rgb = out_depth = out_seg = None
        if rgb:
            out_rgb = r.render().copy()
        if depth and segmentation and self._fused_ok:
            out_depth, out_seg = self._render_depth_and_segmentation()
        else:
            if depth:
                r.enable_depth_rendering()
                out_depth = r.render().copy()
                r.disable_depth_rendering()
            if segmentation:
                r.enable_segmentation_rendering()
                seg = r.render()  # [H, W, 2] = (object id, object type), -1 for background
                r.disable_segmentation_rendering()
                out_seg = self._to_body_ids(seg)
        return CameraFrame(
            rgb=out_rgb,
            depth=out_depth,
            segmentation=out_seg,
            intrinsics=camera_intrinsics(self.model, cam_id, self.height, self.width),
            world_to_camera=camera_extrinsics(data, cam_id),
        )

    def _render_depth_and_segmentation(self) -> tuple[np.ndarray, np.ndarray]:
        """Depth and body segmentation from ONE draw of the scene.

        ``mujoco.Renderer`` draws the scene once for depth and once more for segmentation, although both come
        out of the same segmentation-coloured draw (the colour buffer holds geom ids, the depth buffer depth).
        On llvmpipe a draw of a mesh-heavy arm costs ~8 ms whatever the resolution (vertex-bound), so reading
        both buffers from one draw saves a third of the geometry work. This uses the renderer's GL and MuJoCo
        render contexts (private attributes of ``mujoco.Renderer``, checked in ``__init__``); the conversions
        mirror ``Renderer.render`` and a test compares the two paths.
        """
        r = self._renderer
        scene = r.scene
        flags = scene.flags.copy()
        scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
        scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        try:
            if r._gl_context:
                r._gl_context.make_current()
            mujoco.mjr_render(r._rect, scene, r._mjr_context)
            mujoco.mjr_readPixels(self._id_buf, self._depth_buf, r._rect, r._mjr_context)
        finally:
            np.copyto(scene.flags, flags)
        # Depth buffer (reversed-Z, mjDEPTH_ZEROFAR, set by the Renderer) -> metres along the optical axis.
        extent = self.model.stat.extent
        near = np.float32(self.model.vis.map.znear * extent)
        far = np.float32(self.model.vis.map.zfar * extent)
        c = np.float32(-0.5) * (-(far + near) / (far - near)) - np.float32(0.5)
        d = np.float32(-0.5) * (-(np.float32(2) * far * near) / (far - near))
        depth = (d / (self._depth_buf.astype(np.float64) + c)).astype(np.float32)
        # Colour buffer holds segid + 1 (0 = background) -> geom id -> body id.
        ids = self._id_buf.astype(np.int32)
        segid = ids[..., 0] + (ids[..., 1] << 8) + (ids[..., 2] << 16)
        lut = np.full(scene.ngeom + 1, -1, dtype=np.int32)
        for g in scene.geoms[: scene.ngeom]:
            if g.segid >= 0 and g.objtype == int(mujoco.mjtObj.mjOBJ_GEOM) and g.objid >= 0:
                lut[g.segid + 1] = self._geom_bodyid[g.objid]
        body = lut[np.clip(segid, 0, scene.ngeom)]
        if r._gl_context:  # EGL/OSMesa images come out bottom-up
            depth, body = np.flipud(depth), np.flipud(body)
        return np.ascontiguousarray(depth), np.ascontiguousarray(body)

    def _to_body_ids(self, seg: np.ndarray) -> np.ndarray:
        """Geom-id segmentation -> body-id segmentation (-1 for background and non-geom objects)."""
        obj_id, obj_type = seg[..., 0], seg[..., 1]
        is_geom = (obj_type == int(mujoco.mjtObj.mjOBJ_GEOM)) & (obj_id >= 0)
        body = np.full(obj_id.shape, -1, dtype=np.int32)
        body[is_geom] = self._geom_bodyid[obj_id[is_geom]]
        return body

    def close(self) -> None:
        for other in self._other_sizes.values():
            other.close()
        self._other_sizes.clear()
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> SimCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def body_names(model: mujoco.MjModel) -> list[str]:
    """Names of all bodies, index = body id (body 0 is the world)."""
    return [model.body(i).name for i in range(model.nbody)]


def default_workers() -> int:
    """Worker processes for rendering: one per available core, at most 2 (the demo machine has 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


_WORKER: dict = {}  # per worker process: the model and the SimCamera built by _worker_init


def load_model(source: str | os.PathLike | Callable[[], mujoco.MjModel]) -> mujoco.MjModel:
    """An MJCF file path, or a module-level function that builds the model (e.g. an MjSpec with added cameras)."""
    return source() if callable(source) else mujoco.MjModel.from_xml_path(str(source))


def _worker_init(model_source, height: int, width: int) -> None:
    model = load_model(model_source)
    cam = SimCamera(model, height, width)
    atexit.register(cam.close)  # close the GL context before interpreter teardown (avoids EGLError noise)
    _WORKER.update(model=model, cam=cam)


def _worker_call(job: Callable, args: tuple):
    return job(_WORKER["model"], _WORKER["cam"], *args)


def run_render_jobs(
    job: Callable, jobs: Sequence[tuple], model_source: str | os.PathLike | Callable[[], mujoco.MjModel],
    height: int, width: int, workers: int | None = None,
) -> list:
    """Return ``[job(model, cam, *args) for args in jobs]``, in order, possibly computed in parallel.

    ``model`` is ``load_model(model_source)`` (an MJCF path or a picklable model builder) and ``cam`` a ``SimCamera(model, height, width)``, one pair
    per process. With ``workers`` <= 1 (or a single job) everything runs here; otherwise in a pool of "spawn"
    processes (never fork: the parent may hold GL/EGL state or threads). ``job`` must be a module-level
    function and its arguments and result picklable. The first failing job's exception is re-raised.
    """
    if not jobs:
        return []
    workers = default_workers() if workers is None else workers
    if multiprocessing.current_process().daemon:
        workers = 1  # daemonic processes may not have children
    if workers <= 1 or len(jobs) <= 1:
        model = load_model(model_source)
        with SimCamera(model, height, width) as cam:
            return [job(model, cam, *args) for args in jobs]
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(model_source if callable(model_source) else str(model_source), height, width),
    )
    try:
        futures = [pool.submit(_worker_call, job, tuple(args)) for args in jobs]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def aloha_model_path() -> Path:
    """gym-aloha's bimanual ViperX scene (the arm every sample simulator renders)."""
    import gym_aloha

    return Path(gym_aloha.__file__).parent / "assets" / "bimanual_viperx_transfer_cube.xml"


def look_at_quat(pos, target) -> np.ndarray:
    """MuJoCo camera orientation (looking along its local -z, +y up) from a position and a look-at point."""
    back = np.asarray(pos, float) - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    if np.linalg.norm(right) < 1e-6:  # looking straight down: image x along world x
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.stack([right, np.cross(back, right), back], 1).ravel())
    return quat
