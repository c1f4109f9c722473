/*
 * The lock fast path in C: spin_lock / spin_unlock / spin_trylock, the irq-save forms, the
 * soft interrupt mask and trace events, on the arena's words and the run's named semaphores.
 *
 * Why C: the fast path does the same work as the Python version it replaced (chain-cache
 * lookup, sem_trywait, owner/site/since and statistics in the arena, the held stack, hold
 * time and its log2 bucket on release), but in Python ~1.1 us of a 1.9 us pair was the
 * interpreter's own work (benchmarks/results.md). Here the pair costs a few hundred ns.
 *
 * Interrupts: a physical interrupt is a signal whose Python handler runs only between
 * bytecodes (FACTS.md). Code in this file runs no bytecode, so a fast-path acquisition or
 * release is atomic with respect to the ISR without touching the soft mask. Whenever this
 * file calls back into Python (the chain validation of a new held-class chain, scheduling
 * noise, a contended wait, an out-of-order unlock, a trace of the contended path), it sets
 * ``masked`` first, exactly as the Python bookkeeping did, and on the way out restores the
 * caller's state and runs interrupts that arrived meanwhile.
 *
 * Locking rules: the only lock taken here is the semaphore itself; the Python slow paths it
 * calls may take the arena's graph semaphore (lockdep), never another model lock.
 *
 * Everything not hot stays in Python (shm_model/cpu.py, shm_model/spinlock.py): the types
 * here are base classes, and the slow paths are methods of the Python subclasses.
 *
 * Controlled mode (``cpu.sched`` set, see stress/schedule.py): every lock operation is a
 * scheduling point. An acquisition's point is at the API call's entry, with interrupts as the
 * caller has them (before ``_irqsave`` masks them: that is where an interrupt can still come
 * in); a release's point is after the release and the interrupt restore. At a point the
 * scheduler may hand the run token to another worker, or deliver this CPU's interrupts.
 * A contended acquisition blocks in the scheduler (Lock._contended), never in the kernel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <semaphore.h>
#include <stdint.h>
#include <time.h>

#define TASK 0
#define EV_WORDS 5
#define EV_ACQUIRE 3
#define EV_RELEASE 4
#define EV_TRYLOCK_FAIL 11
#define EV_WM_STORE 14 /* a relaxed store buffered: a = location, b = value */
#define EV_WM_COMMIT 15 /* a buffered store committed: a = location, b = value, c = timestamp */
#define EV_WM_LOAD 16 /* a relaxed load: a = location, b = value, c = timestamp; name = newer messages passed over */
#define NO_OWNER (-1)
#define KEY_DIGIT_BITS 15
#define MAX_SUBCLASS 8
#define MAX_INTERNAL 32
/* a chain key is exact: one 15-bit digit per held lock: (lock index + 1) << 5 | subclass << 2 |
 * ctx << 1 | masked. Keys are per lock *instance* (not per class), so a chain with another
 * instance under it is validated anew: lockdep's guards are instances (a guard counts only
 * when every edge of a cycle was taken holding the same lock). Up to this value the next key
 * fits in a signed 64-bit word; deeper chains are computed with Python ints (never truncated). */
#define KEY_FAST_MAX (((int64_t)1) << (63 - KEY_DIGIT_BITS))

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic_ns()'s clock */
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The lock path's clock: CLOCK_MONOTONIC, read through the TSC between re-bases.
 *
 * Two clock_gettime() per lock pair were a third of its cost (benchmarks/results.md: the
 * pair without them costs 1.0-1.2x a bare semaphore pair, with them 1.6x). On x86 the
 * kernel's own clocksource here is the TSC, so this process reads the TSC (rdtsc, a few
 * ns) and converts it with a rate measured between two clock_gettime() samples at least
 * CLK_SPAN_NS apart, re-basing on clock_gettime() once a span has passed: every value is
 * CLOCK_MONOTONIC to within the rate's error over one span (measured: within 1.3 us; the
 * watchdog compares these times with its own clock_gettime() at millisecond scale) and
 * never goes backwards within this process. Elsewhere (no TSC), plain clock_gettime(). */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define CLK_SPAN_NS 2000000LL /* re-base every 2 ms of TSC time */
static int64_t clk_base_ns, clk_last_ns;
static uint64_t clk_base_tsc, clk_span_tsc;
static double clk_ns_per_tsc; /* 0 until measured */

static int64_t clk_rebase(uint64_t t) {
    int64_t ns = mono_ns();
    if (clk_base_tsc && t > clk_base_tsc && ns - clk_base_ns >= CLK_SPAN_NS / 2) {
        double rate = (double)(ns - clk_base_ns) / (double)(t - clk_base_tsc);
        if (rate > 0.01 && rate < 100.0) { /* sane (0.01-100 GHz): keep it */
            clk_ns_per_tsc = rate;
            clk_span_tsc = (uint64_t)(CLK_SPAN_NS / rate);
        }
    }
    /* the base moves once half a span has passed since it was taken (the rate then has a
     * span to be measured over; until the first rate, every call reads clock_gettime) */
    if (!clk_base_tsc || ns - clk_base_ns >= CLK_SPAN_NS / 2) {
        clk_base_ns = ns;
        clk_base_tsc = t;
    }
    if (ns < clk_last_ns)
        ns = clk_last_ns;
    clk_last_ns = ns;
    return ns;
}

static inline int64_t now_ns(void) {
    uint64_t t = __rdtsc();
    uint64_t dt = t - clk_base_tsc;
    if (!clk_ns_per_tsc || t < clk_base_tsc || dt >= clk_span_tsc)
        return clk_rebase(t);
    int64_t v = clk_base_ns + (int64_t)((double)dt * clk_ns_per_tsc);
    if (v < clk_last_ns)
        v = clk_last_ns;
    clk_last_ns = v;
    return v;
}
#else
static inline int64_t now_ns(void) { return mono_ns(); }
#endif

static inline int bit_length(int64_t v) {
    if (v <= 0)
        return 0;
    return 64 - __builtin_clzll((unsigned long long)v);
}

/* co_filename objects of instrumentation modules (sites.internal): a site is taken in their
 * callers. Compared by identity: every code object of a module shares its filename object. */
static PyObject *internal_files[MAX_INTERNAL];
static int n_internal;

static inline int is_internal(PyCodeObject *code) {
    PyObject *fn = code->co_filename;
    for (int i = 0; i < n_internal; i++)
        if (internal_files[i] == fn)
            return 1;
    return 0;
}

/* The site of the calling Python frame that is not instrumentation, as shm_model.sites.key_of
 * makes it: (id(code) >> 4) << 16 | (f_lasti & 0xFFFF). 0 when there is none. */
static int64_t capture_site(void) {
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    if (!f)
        return 0;
    Py_INCREF(f);
    for (int depth = 0; f && depth < 16; depth++) {
        PyCodeObject *code = PyFrame_GetCode(f);
        if (!is_internal(code)) {
            int64_t site = ((int64_t)((uintptr_t)code >> 4) << 16) | (PyFrame_GetLasti(f) & 0xFFFF);
            Py_DECREF(code);
            Py_DECREF(f);
            return site;
        }
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return 0;
}

static PyObject *m_set_internal(PyObject *mod, PyObject *fn) {
    for (int i = 0; i < n_internal; i++)
        if (internal_files[i] == fn)
            Py_RETURN_NONE;
    if (n_internal >= MAX_INTERNAL) {
        PyErr_SetString(PyExc_OverflowError, "too many instrumentation files");
        return NULL;
    }
    internal_files[n_internal++] = Py_NewRef(fn);
    Py_RETURN_NONE;
}

static PyObject *m_capture_site(PyObject *mod, PyObject *unused) { return PyLong_FromLongLong(capture_site()); }

static PyObject *str_wm_acquired, *str_wm_releasing;
static PyObject *str_new_chain, *str_jitter, *str_contended, *str_unlock_out_of_order, *str_run_irqs,
    *str_irqs_enabled_holding, *str_point;

/* ---- CpuCore ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    volatile int64_t *w; /* the arena's words; valid while buf is held */
    Py_buffer buf;
    int has_buf;
    Py_ssize_t nwords;
    char masked;
    char irq_pending;
    char trace_locks;
    int ctx;
    double noise;
    PyObject *held;   /* (task list, irq list) of (lock, chain key) */
    PyObject *chains; /* chain key -> site */
    PyObject *hooks;
    PyObject *sched;  /* controlled mode's scheduler, or None (free mode) */
    PyObject *wm;     /* this CPU's weak-memory state (shm_model.weak.MemCpu), or None */
    int64_t oid[2];
    Py_ssize_t th;     /* trace ring head word */
    int64_t tevents;   /* events in the ring */
} CpuCore;

static PyTypeObject CpuCoreType;

static int cpu_traverse(CpuCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->held);
    Py_VISIT(self->chains);
    Py_VISIT(self->hooks);
    Py_VISIT(self->sched);
    Py_VISIT(self->wm);
    /* not buf.obj: the arena's memoryview refers to nothing that could lead back here, and
     * the collector clearing it while exported would break its release */
    return 0;
}

static int cpu_clear(CpuCore *self) {
    Py_CLEAR(self->held);
    Py_CLEAR(self->chains);
    Py_CLEAR(self->hooks);
    Py_CLEAR(self->sched);
    Py_CLEAR(self->wm);
    return 0;
}

static void cpu_release_buf(CpuCore *self) {
    if (self->has_buf) {
        self->has_buf = 0;
        self->w = NULL;
        PyBuffer_Release(&self->buf);
    }
}

static void cpu_dealloc(CpuCore *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    cpu_clear(self);
    cpu_release_buf(self);
    tp->tp_free((PyObject *)self); /* a heap subtype's own dealloc drops its type */
}

static PyObject *cpu_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    CpuCore *self = (CpuCore *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->held = Py_BuildValue("([][])");
    self->chains = PyDict_New();
    Py_INCREF(Py_None);
    self->hooks = Py_None;
    Py_INCREF(Py_None);
    self->sched = Py_None;
    Py_INCREF(Py_None);
    self->wm = Py_None;
    self->oid[0] = self->oid[1] = NO_OWNER;
    if (!self->held || !self->chains) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* _attach(mv, wid, trace_head, trace_events): map the arena's words (a memoryview cast to
 * 'q'), this worker's owner ids and trace ring. */
static PyObject *cpu_attach(CpuCore *self, PyObject *args) {
    PyObject *mv;
    long long wid, th, tev;
    if (!PyArg_ParseTuple(args, "OLLL", &mv, &wid, &th, &tev))
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(mv, &b, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return NULL;
    if (b.itemsize != 8 || !b.format || (strcmp(b.format, "q") && strcmp(b.format, "@q"))) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_TypeError, "the arena must be a memoryview cast to 'q'");
        return NULL;
    }
    if (th < 0 || tev <= 0 || th + 1 + tev * EV_WORDS > (long long)(b.len / 8)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "trace ring outside the arena");
        return NULL;
    }
    cpu_release_buf(self);
    self->buf = b;
    self->has_buf = 1;
    self->w = (volatile int64_t *)b.buf;
    self->nwords = b.len / 8;
    self->oid[0] = wid * 2;
    self->oid[1] = wid * 2 + 1;
    self->th = (Py_ssize_t)th;
    self->tevents = tev;
    Py_RETURN_NONE;
}

static PyObject *cpu_detach(CpuCore *self, PyObject *unused) {
    cpu_release_buf(self);
    Py_RETURN_NONE;
}

static inline void c_trace(CpuCore *cpu, int64_t kind, int64_t name, int64_t a, int64_t b, int64_t c) {
    volatile int64_t *w = cpu->w;
    Py_ssize_t th = cpu->th;
    int64_t h = w[th];
    Py_ssize_t i = th + 1 + (Py_ssize_t)((h % cpu->tevents) * EV_WORDS);
    w[i] = now_ns();
    w[i + 1] = kind | ((int64_t)cpu->ctx << 8) | (name << 16);
    w[i + 2] = a;
    w[i + 3] = b;
    w[i + 4] = c;
    w[th] = h + 1;
}

static int need_arena(CpuCore *cpu) {
    if (!cpu->has_buf) {
        PyErr_SetString(PyExc_RuntimeError, "this Cpu has no arena (detached or not attached)");
        return -1;
    }
    return 0;
}

/* trace(kind, name, a=0, b=0, c=0): append an event to this CPU's ring. */
static PyObject *cpu_trace(CpuCore *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[5] = {0, 0, 0, 0, 0};
    if (nargs < 2 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "trace(kind, name, a=0, b=0, c=0)");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        v[i] = PyLong_AsLongLong(args[i]);
        if (v[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    if (need_arena(self) < 0)
        return NULL;
    c_trace(self, v[0], v[1], v[2], v[3], v[4]);
    Py_RETURN_NONE;
}

static PyObject *cpu_now(CpuCore *self, PyObject *unused) { return PyLong_FromLongLong(now_ns()); }

/* Run interrupts that arrived while masked (the Python ``run_irqs``). */
static inline int run_pending(CpuCore *cpu, int m) {
    if (cpu->irq_pending && !m) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)cpu, str_run_irqs);
        if (!r)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* A scheduling point (controlled mode only): ``sched.point(cpu, irqs_on)``. */
static inline int sched_point(CpuCore *cpu) {
    if (cpu->sched == Py_None || cpu->sched == NULL)
        return 0;
    PyObject *args[3] = {cpu->sched, (PyObject *)cpu, cpu->masked ? Py_False : Py_True};
    PyObject *r = PyObject_VectorcallMethod(str_point, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *cpu_local_irq_save(CpuCore *self, PyObject *unused) {
    int flags = self->masked;
    self->masked = 1;
    return PyBool_FromLong(flags);
}

static int c_irq_restore(CpuCore *self, int flags) {
    if (!flags && self->masked && self->ctx == TASK && PyList_GET_SIZE(PyTuple_GET_ITEM(self->held, TASK))) {
        PyObject *r = PyObject_CallMethodOneArg(self->hooks, str_irqs_enabled_holding, (PyObject *)self);
        if (!r)
            return -1;
        Py_DECREF(r);
    }
    self->masked = (char)flags;
    return run_pending(self, flags);
}

static PyObject *cpu_local_irq_restore(CpuCore *self, PyObject *flags) {
    int f = PyObject_IsTrue(flags);
    if (f < 0 || c_irq_restore(self, f) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *cpu_local_irq_disable(CpuCore *self, PyObject *unused) {
    self->masked = 1;
    Py_RETURN_NONE;
}

static PyObject *cpu_local_irq_enable(CpuCore *self, PyObject *unused) {
    if (c_irq_restore(self, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int set_held(CpuCore *self, PyObject *v, void *closure) {
    if (!v || !PyTuple_CheckExact(v) || PyTuple_GET_SIZE(v) != 2 || !PyList_CheckExact(PyTuple_GET_ITEM(v, 0)) ||
        !PyList_CheckExact(PyTuple_GET_ITEM(v, 1))) {
        PyErr_SetString(PyExc_TypeError, "held must be a tuple of two lists (task, irq)");
        return -1;
    }
    Py_INCREF(v);
    Py_SETREF(self->held, v);
    return 0;
}

static PyObject *get_held(CpuCore *self, void *closure) { return Py_NewRef(self->held); }

static int set_chains(CpuCore *self, PyObject *v, void *closure) {
    if (!v || !PyDict_CheckExact(v)) {
        PyErr_SetString(PyExc_TypeError, "chains must be a dict");
        return -1;
    }
    Py_INCREF(v);
    Py_SETREF(self->chains, v);
    return 0;
}

static PyObject *get_chains(CpuCore *self, void *closure) { return Py_NewRef(self->chains); }

static int set_ctx(CpuCore *self, PyObject *v, void *closure) {
    long c = v ? PyLong_AsLong(v) : -1;
    if (c == -1 && PyErr_Occurred())
        return -1;
    if (c != 0 && c != 1) {
        PyErr_SetString(PyExc_ValueError, "ctx is 0 (task) or 1 (irq)");
        return -1;
    }
    self->ctx = (int)c;
    return 0;
}

static PyObject *get_ctx(CpuCore *self, void *closure) { return PyLong_FromLong(self->ctx); }

static PyObject *get_attached(CpuCore *self, void *closure) { return PyBool_FromLong(self->has_buf); }

static PyMemberDef cpu_members[] = {
    {"masked", T_BOOL, offsetof(CpuCore, masked), 0, "soft interrupt mask (interrupts disabled)"},
    {"irq_pending", T_BOOL, offsetof(CpuCore, irq_pending), 0, "an interrupt arrived while masked"},
    {"trace_locks", T_BOOL, offsetof(CpuCore, trace_locks), 0, "trace every acquire and release"},
    {"noise", T_DOUBLE, offsetof(CpuCore, noise), 0, "probability of scheduling noise at a lock operation"},
    {"hooks", T_OBJECT_EX, offsetof(CpuCore, hooks), 0, "the engine's Hooks"},
    {"sched", T_OBJECT_EX, offsetof(CpuCore, sched), 0, "controlled mode's scheduler (None: free mode)"},
    {"wm", T_OBJECT_EX, offsetof(CpuCore, wm), 0,
     "weak-memory state (shm_model.weak.MemCpu): lock acquisitions are acquires, releases releases; None: none"},
    {NULL}};

static PyGetSetDef cpu_getset[] = {
    {"held", (getter)get_held, (setter)set_held, "held locks per context: ([(lock, key)], [(lock, key)])", NULL},
    {"chains", (getter)get_chains, (setter)set_chains, "chain cache: held-class chain key -> site", NULL},
    {"ctx", (getter)get_ctx, (setter)set_ctx, "current context: 0 task, 1 interrupt", NULL},
    {"attached", (getter)get_attached, NULL, "the arena is mapped", NULL},
    {NULL}};

static PyMethodDef cpu_methods[] = {
    {"_attach", (PyCFunction)cpu_attach, METH_VARARGS, "_attach(mv, wid, trace_head, trace_events)"},
    {"detach", (PyCFunction)cpu_detach, METH_NOARGS, "Release the arena's buffer (the Cpu is unusable after)."},
    {"trace", (PyCFunction)(void (*)(void))cpu_trace, METH_FASTCALL,
     "trace(kind, name, a=0, b=0, c=0): append an event to this CPU's ring (atomic w.r.t. the ISR)."},
    {"now", (PyCFunction)cpu_now, METH_NOARGS, "time.monotonic_ns()"},
    {"local_irq_save", (PyCFunction)cpu_local_irq_save, METH_NOARGS,
     "Disable interrupts on this CPU; return the previous state (Xen's flags)."},
    {"local_irq_restore", (PyCFunction)cpu_local_irq_restore, METH_O,
     "Restore the state saved by local_irq_save; run interrupts that arrived while masked."},
    {"local_irq_disable", (PyCFunction)cpu_local_irq_disable, METH_NOARGS, "Disable interrupts."},
    {"local_irq_enable", (PyCFunction)cpu_local_irq_enable, METH_NOARGS,
     "Enable interrupts; run those that arrived while masked."},
    {NULL}};

static PyTypeObject CpuCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shm_model._fastlock.CpuCore",
    .tp_basicsize = sizeof(CpuCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot state of a model CPU (base of shm_model.cpu.Cpu).",
    .tp_new = cpu_new,
    .tp_dealloc = (destructor)cpu_dealloc,
    .tp_traverse = (traverseproc)cpu_traverse,
    .tp_clear = (inquiry)cpu_clear,
    .tp_members = cpu_members,
    .tp_getset = cpu_getset,
    .tp_methods = cpu_methods,
};

/* ---- LockCore --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    CpuCore *cpu; /* NULL until bind */
    sem_t *sem;
    Py_ssize_t index;
    int64_t key; /* this lock's chain-key digit: (class + 1) << 2 */
    Py_ssize_t o_owner, o_site, o_since;
    Py_ssize_t st, hh; /* this worker's class statistics and hold histogram */
    PyObject *k0[8];   /* the outermost chain keys, made once: [read << 2 | ctx << 1 | masked] */
} LockCore;

static PyTypeObject LockCoreType;

static int lock_traverse(LockCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->cpu);
    return 0;
}

static int lock_clear(LockCore *self) {
    Py_CLEAR(self->cpu);
    for (int i = 0; i < 8; i++)
        Py_CLEAR(self->k0[i]);
    return 0;
}

static void lock_dealloc(LockCore *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    lock_clear(self);
    if (self->sem) {
        sem_close(self->sem);
        self->sem = NULL;
    }
    tp->tp_free((PyObject *)self); /* a heap subtype's own dealloc drops its type */
}

/* _open(sem_name, index, key_digit, o_owner, o_site, o_since): open this process's mapping of
 * the lock's named semaphore and remember where its record lives in the arena. */
static PyObject *lock_open(LockCore *self, PyObject *args) {
    const char *name;
    Py_ssize_t index, o_owner, o_site, o_since;
    long long key;
    if (!PyArg_ParseTuple(args, "snLnnn", &name, &index, &key, &o_owner, &o_site, &o_since))
        return NULL;
    sem_t *s = sem_open(name, 0);
    if (s == SEM_FAILED)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    if (self->sem)
        sem_close(self->sem);
    self->sem = s;
    self->index = index;
    self->key = key;
    for (int i = 0; i < 8; i++)
        Py_CLEAR(self->k0[i]); /* made from the old key digits */
    self->o_owner = o_owner;
    self->o_site = o_site;
    self->o_since = o_since;
    Py_RETURN_NONE;
}

static inline CpuCore *bound_cpu(LockCore *self) {
    CpuCore *cpu = self->cpu;
    if (!cpu || !self->sem) {
        PyErr_Format(PyExc_RuntimeError, "lock %zd is not bound to a Cpu", self->index);
        return NULL;
    }
    if (!cpu->has_buf) {
        PyErr_SetString(PyExc_RuntimeError, "the lock's Cpu has no arena (detached)");
        return NULL;
    }
    return cpu;
}

/* The chain key of taking this lock on top of ``held``: the top entry's key shifted by one
 * digit, or'ed with (class digit | ctx << 1 | masked). New reference. */
static PyObject *chain_key_digit(PyObject *held, Py_ssize_t n, int64_t digit) {
    if (!n)
        return PyLong_FromLongLong(digit);
    PyObject *top = PyList_GET_ITEM(held, n - 1);
    if (!PyTuple_CheckExact(top) || PyTuple_GET_SIZE(top) != 2) {
        PyErr_SetString(PyExc_TypeError, "held entries are (lock, key) tuples");
        return NULL;
    }
    PyObject *tk = PyTuple_GET_ITEM(top, 1);
    int overflow = 0;
    long long k = PyLong_AsLongLongAndOverflow(tk, &overflow);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    if (!overflow && k >= 0 && k < KEY_FAST_MAX)
        return PyLong_FromLongLong((k << KEY_DIGIT_BITS) | digit);
    /* deep chain: exact Python-int arithmetic */
    PyObject *nine = PyLong_FromLong(KEY_DIGIT_BITS), *d = PyLong_FromLongLong(digit), *sh = NULL, *r = NULL;
    if (nine && d && (sh = PyNumber_Lshift(tk, nine)))
        r = PyNumber_Or(sh, d);
    Py_XDECREF(nine);
    Py_XDECREF(d);
    Py_XDECREF(sh);
    return r;
}

/* The key of an outermost acquisition (nothing held in this context) is one of eight per lock:
 * kept, so the commonest acquisition allocates no key object. New reference. */
static inline PyObject *outer_key(LockCore *self, int slot, int64_t digit) {
    PyObject *k = self->k0[slot];
    if (!k && !(k = self->k0[slot] = PyLong_FromLongLong(digit)))
        return NULL;
    return Py_NewRef(k);
}

static PyObject *chain_key(LockCore *self, PyObject *held, Py_ssize_t n, int ctx, int m, int sub) {
    int64_t digit = self->key | ((int64_t)sub << 2) | ((int64_t)ctx << 1) | m;
    if (!n && !sub)
        return outer_key(self, ctx << 1 | m, digit);
    return chain_key_digit(held, n, digit);
}

static inline int push_held(LockCore *self, PyObject *held, PyObject *key) {
    PyObject *t = PyTuple_New(2);
    if (!t)
        return -1;
    Py_INCREF(self);
    PyTuple_SET_ITEM(t, 0, (PyObject *)self);
    Py_INCREF(key);
    PyTuple_SET_ITEM(t, 1, key);
    int r = PyList_Append(held, t);
    Py_DECREF(t);
    return r;
}

/* Record an acquisition: the lock's owner, site and time, this worker's count of the class,
 * the held stack; trace it when asked. */
static inline int record_acquire(LockCore *self, CpuCore *cpu, PyObject *held, PyObject *key, int ctx,
                                 int64_t site) {
    volatile int64_t *w = cpu->w;
    w[self->o_owner] = cpu->oid[ctx];
    w[self->o_site] = site;
    w[self->o_since] = now_ns();
    w[self->st] += 1;
    if (push_held(self, held, key) < 0)
        return -1; /* out of memory with the lock taken: nothing sane is left to do */
    if (cpu->trace_locks)
        c_trace(cpu, EV_ACQUIRE, 0, self->index, site, 0);
    return 0;
}

/* Weak memory (shm_model/weak.py): with relaxed fields in the state, an acquisition is an
 * acquire and a release a release. The lock record's L_VIEW word (o_owner + 7) carries the
 * releaser's view; cpu->wm's methods do the rest in Python, masked. 0, or -1 on error. */
#define L_VIEW_FROM_OWNER 7
static int wm_call(CpuCore *cpu, PyObject *name, Py_ssize_t owner_word) {
    if (cpu->wm == Py_None)
        return 0;
    int m = cpu->masked;
    cpu->masked = 1;
    PyObject *arg = PyLong_FromSsize_t(owner_word + L_VIEW_FROM_OWNER);
    PyObject *r = arg ? PyObject_CallMethodOneArg(cpu->wm, name, arg) : NULL;
    Py_XDECREF(arg);
    cpu->masked = (char)m;
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Validate a held-lock chain not seen before (lockdep), masked, and cache it. The site is
 * this acquisition's own (capture_site): the cache holds chains, never sites, so every
 * acquisition records where it really happened. */
static int new_chain(CpuCore *cpu, LockCore *self, PyObject *key, PyObject *cache_key, PyObject *held, int m,
                     int ctx, int trylock) {
    PyObject *args[7] = {cpu->hooks, (PyObject *)cpu, (PyObject *)self, key, held,
                         (!m && ctx == TASK) ? Py_True : Py_False, trylock ? Py_True : Py_False};
    cpu->masked = 1;
    PyObject *r = PyObject_VectorcallMethod(str_new_chain, args, 7 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (!r)
        return -1;
    Py_DECREF(r);
    return PyDict_SetItem(cpu->chains, cache_key, Py_True);
}

static inline int trywait(sem_t *s) {
    int r;
    do
        r = sem_trywait(s);
    while (r != 0 && errno == EINTR);
    if (r == 0)
        return 1;
    if (errno == EAGAIN)
        return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* spin_lock */
static PyObject *c_lock(LockCore *self, CpuCore *cpu, int sub) {
    int m = cpu->masked, ctx = cpu->ctx;
    PyObject *held = PyTuple_GET_ITEM(cpu->held, ctx);
    PyObject *key = chain_key(self, held, PyList_GET_SIZE(held), ctx, m, sub);
    if (!key)
        return NULL;
    int64_t site = capture_site();
    int cached = PyDict_Contains(cpu->chains, key);
    if (cached < 0 || (!cached && new_chain(cpu, self, key, key, held, m, ctx, 0) < 0))
        goto fail;
    if (cpu->noise > 0.0) {
        cpu->masked = 1;
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)cpu, str_jitter);
        if (!r)
            goto fail;
        Py_DECREF(r);
    }
    int got = trywait(self->sem);
    if (got < 0)
        goto fail;
    if (!got) {
        PyObject *args[4] = {(PyObject *)self, (PyObject *)cpu, NULL, NULL};
        args[2] = PyLong_FromLong(ctx);
        args[3] = PyBool_FromLong(m);
        cpu->masked = 1;
        PyObject *r = args[2] ? PyObject_VectorcallMethod(str_contended, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                              : NULL;
        Py_XDECREF(args[2]);
        Py_DECREF(args[3]);
        if (!r)
            goto fail;
        site = PyLong_AsLongLong(r);
        Py_DECREF(r);
        if (site == -1 && PyErr_Occurred())
            goto fail;
    }
    int r = record_acquire(self, cpu, held, key, ctx, site);
    Py_DECREF(key);
    if (r < 0 || wm_call(cpu, str_wm_acquired, self->o_owner) < 0)
        return NULL;
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_NONE;
fail:
    Py_DECREF(key);
    cpu->masked = (char)m;
    return NULL;
}

/* spin_trylock: no dependency edge into the lock (a trylock cannot deadlock), as lockdep;
 * trylock chains are cached under the key's complement. */
static PyObject *c_trylock(LockCore *self, CpuCore *cpu) {
    int m = cpu->masked, ctx = cpu->ctx;
    PyObject *held = PyTuple_GET_ITEM(cpu->held, ctx);
    int got = trywait(self->sem);
    if (got < 0)
        return NULL;
    if (!got) {
        if (cpu->trace_locks)
            c_trace(cpu, EV_TRYLOCK_FAIL, 0, self->index, 0, 0);
        Py_RETURN_FALSE;
    }
    PyObject *key = chain_key(self, held, PyList_GET_SIZE(held), ctx, m, 0);
    PyObject *ckey = key ? PyNumber_Invert(key) : NULL;
    int64_t site = capture_site();
    if (!ckey)
        goto fail;
    int cached = PyDict_Contains(cpu->chains, ckey);
    if (cached < 0 || (!cached && new_chain(cpu, self, key, ckey, held, m, ctx, 1) < 0))
        goto fail;
    Py_DECREF(ckey);
    int r = record_acquire(self, cpu, held, key, ctx, site);
    Py_DECREF(key);
    if (r < 0 || wm_call(cpu, str_wm_acquired, self->o_owner) < 0)
        return NULL;
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_TRUE;
fail:
    /* the lock was taken: give it back before reporting the error */
    sem_post(self->sem);
    Py_XDECREF(key);
    Py_XDECREF(ckey);
    cpu->masked = (char)m;
    return NULL;
}

/* Pop this lock off the held stack of the current context: 1 popped, 0 a bad unlock balance
 * (reported, nothing to release), -1 an error. Runs masked while in Python. */
static int pop_held(LockCore *self, CpuCore *cpu) {
    int m = cpu->masked;
    PyObject *held = PyTuple_GET_ITEM(cpu->held, cpu->ctx);
    Py_ssize_t n = PyList_GET_SIZE(held);
    PyObject *top = n ? PyList_GET_ITEM(held, n - 1) : NULL;
    if (top && PyTuple_CheckExact(top) && PyTuple_GET_SIZE(top) == 2 && PyTuple_GET_ITEM(top, 0) == (PyObject *)self) {
        Py_SET_SIZE(held, n - 1); /* pop: the list keeps its allocation */
        Py_DECREF(top);
        return 1;
    }
    PyObject *args[3] = {(PyObject *)self, (PyObject *)cpu, held};
    cpu->masked = 1;
    PyObject *r = PyObject_VectorcallMethod(str_unlock_out_of_order, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    int ok = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    cpu->masked = (char)m;
    return ok;
}

/* The hold time of a release: maximum and log2 histogram of this worker's class. */
static inline void account_hold(LockCore *self, volatile int64_t *w, int64_t since) {
    int64_t hold = now_ns() - since;
    if (hold > w[self->st + 4 /* S_HOLD_MAX - S_ACQ */])
        w[self->st + 4] = hold;
    w[self->hh + bit_length(hold)] += 1;
}

/* spin_unlock */
static PyObject *c_unlock(LockCore *self, CpuCore *cpu) {
    int m = cpu->masked;
    int ok = pop_held(self, cpu);
    if (ok < 0)
        return NULL;
    if (!ok) { /* bad unlock balance: reported, nothing released */
        if (run_pending(cpu, m) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (wm_call(cpu, str_wm_releasing, self->o_owner) < 0)
        return NULL;
    volatile int64_t *w = cpu->w;
    account_hold(self, w, w[self->o_since]);
    w[self->o_owner] = NO_OWNER;
    if (sem_post(self->sem) != 0) {
        cpu->masked = (char)m;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (cpu->trace_locks)
        c_trace(cpu, EV_RELEASE, 0, self->index, 0, 0);
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A release followed by its scheduling point (controlled mode). */
static PyObject *unlock_point(PyObject *r, CpuCore *cpu) {
    if (r && sched_point(cpu) < 0) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *lock_lock(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    return cpu && sched_point(cpu) == 0 ? c_lock(self, cpu, 0) : NULL;
}

static PyObject *lock_unlock(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    return cpu ? unlock_point(c_unlock(self, cpu), cpu) : NULL;
}

static PyObject *lock_trylock(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    return cpu && sched_point(cpu) == 0 ? c_trylock(self, cpu) : NULL;
}

static PyObject *lock_enter(LockCore *self, PyObject *unused) {
    PyObject *r = lock_lock(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(self);
}

static PyObject *lock_exit(LockCore *self, PyObject *const *args, Py_ssize_t nargs) { return lock_unlock(self, NULL); }

static PyObject *lock_is_locked(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    if (!cpu)
        return NULL;
    return PyBool_FromLong(cpu->w[self->o_owner] != NO_OWNER);
}

static PyObject *lock_held_by_me(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    if (!cpu)
        return NULL;
    int64_t o = cpu->w[self->o_owner];
    return PyBool_FromLong(o != NO_OWNER && (o == cpu->oid[0] || o == cpu->oid[1]));
}

static PyObject *lock_owner(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    if (!cpu)
        return NULL;
    return PyLong_FromLongLong(cpu->w[self->o_owner]);
}

/* _force_release(): release on behalf of a context that cannot (an ISR that returned
 * holding it): owner cleared, semaphore posted, no accounting. */
static PyObject *lock_force_release(LockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu(self);
    if (!cpu)
        return NULL;
    cpu->w[self->o_owner] = NO_OWNER;
    if (sem_post(self->sem) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static int set_cpu(LockCore *self, PyObject *v, void *closure) {
    if (v && v != Py_None && !PyObject_TypeCheck(v, &CpuCoreType)) {
        PyErr_SetString(PyExc_TypeError, "a lock binds to a shm_model Cpu");
        return -1;
    }
    PyObject *old = (PyObject *)self->cpu;
    self->cpu = (v && v != Py_None) ? (CpuCore *)Py_NewRef(v) : NULL;
    Py_XDECREF(old);
    return 0;
}

static PyObject *get_cpu(LockCore *self, void *closure) {
    return self->cpu ? Py_NewRef((PyObject *)self->cpu) : Py_NewRef(Py_None);
}

static PyObject *get_key(LockCore *self, void *closure) { return PyLong_FromLongLong(self->key); }

static PyMemberDef lock_members[] = {
    {"index", T_PYSSIZET, offsetof(LockCore, index), READONLY, "the lock's index in the arena"},
    {"o_owner", T_PYSSIZET, offsetof(LockCore, o_owner), READONLY, "arena word: owner"},
    {"o_site", T_PYSSIZET, offsetof(LockCore, o_site), READONLY, "arena word: site of the acquisition"},
    {"o_since", T_PYSSIZET, offsetof(LockCore, o_since), READONLY, "arena word: time of the acquisition"},
    {"st", T_PYSSIZET, offsetof(LockCore, st), 0, "arena word: this worker's acquisitions of the class"},
    {"hh", T_PYSSIZET, offsetof(LockCore, hh), 0, "arena word: this worker's hold histogram of the class"},
    {NULL}};

static PyGetSetDef lock_getset[] = {
    {"cpu", (getter)get_cpu, (setter)set_cpu, "the Cpu this lock is bound to in this process", NULL},
    {"key", (getter)get_key, NULL, "chain-key digit: (class + 1) << 2", NULL},
    {NULL}};

static PyMethodDef lock_methods[] = {
    {"_open", (PyCFunction)lock_open, METH_VARARGS, "_open(sem_name, index, key_digit, o_owner, o_site, o_since)"},
    {"lock", (PyCFunction)lock_lock, METH_NOARGS, "spin_lock: take the lock, spinning (blocking) while another context holds it."},
    {"unlock", (PyCFunction)lock_unlock, METH_NOARGS, "spin_unlock."},
    {"trylock", (PyCFunction)lock_trylock, METH_NOARGS,
     "spin_trylock: take the lock if it is free. Adds no dependency edge into the lock."},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, "with lock: is spin_lock/spin_unlock"},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, NULL},
    {"is_locked", (PyCFunction)lock_is_locked, METH_NOARGS, "spin_is_locked: held by anyone."},
    {"held_by_me", (PyCFunction)lock_held_by_me, METH_NOARGS, "Held by this CPU, in either context."},
    {"owner", (PyCFunction)lock_owner, METH_NOARGS, "The owner word: worker * 2 + context, or -1."},
    {"_force_release", (PyCFunction)lock_force_release, METH_NOARGS,
     "Release on behalf of a context that cannot (an ISR that returned holding it)."},
    {NULL}};

static PyTypeObject LockCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shm_model._fastlock.LockCore",
    .tp_basicsize = sizeof(LockCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fast path of a model spinlock (base of shm_model.spinlock.Lock).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_traverse = (traverseproc)lock_traverse,
    .tp_clear = (inquiry)lock_clear,
    .tp_members = lock_members,
    .tp_getset = lock_getset,
    .tp_methods = lock_methods,
};

/* ---- Xen's API as module functions (one C call per operation) --------------------------- */

/* The CPU a model spinlock is bound to, or NULL with the error set. */
static inline CpuCore *cpu_of(PyObject *o) {
    if (!PyObject_TypeCheck(o, &LockCoreType)) {
        PyErr_Format(PyExc_TypeError, "expected a model spinlock, got %.100s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    return bound_cpu((LockCore *)o);
}

static PyObject *m_spin_lock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = cpu_of(l);
    return cpu && sched_point(cpu) == 0 ? c_lock((LockCore *)l, cpu, 0) : NULL;
}

static PyObject *m_spin_unlock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = cpu_of(l);
    return cpu ? unlock_point(c_unlock((LockCore *)l, cpu), cpu) : NULL;
}

static PyObject *m_spin_trylock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = cpu_of(l);
    return cpu && sched_point(cpu) == 0 ? c_trylock((LockCore *)l, cpu) : NULL;
}

static PyObject *m_spin_lock_irq(PyObject *mod, PyObject *l) {
    LockCore *lk = (LockCore *)l;
    CpuCore *cpu = cpu_of(l);
    if (!cpu || sched_point(cpu) < 0)
        return NULL;
    cpu->masked = 1;
    return c_lock(lk, cpu, 0);
}

static PyObject *m_spin_unlock_irq(PyObject *mod, PyObject *l) {
    LockCore *lk = (LockCore *)l;
    CpuCore *cpu = cpu_of(l);
    if (!cpu)
        return NULL;
    PyObject *r = c_unlock(lk, cpu);
    if (!r)
        return NULL;
    Py_DECREF(r);
    if (c_irq_restore(cpu, 0) < 0 || sched_point(cpu) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_spin_lock_irqsave(PyObject *mod, PyObject *l) {
    LockCore *lk = (LockCore *)l;
    CpuCore *cpu = cpu_of(l);
    if (!cpu || sched_point(cpu) < 0)
        return NULL;
    int flags = cpu->masked;
    cpu->masked = 1;
    PyObject *r = c_lock(lk, cpu, 0);
    if (!r) {
        cpu->masked = (char)flags;
        return NULL;
    }
    Py_DECREF(r);
    return PyBool_FromLong(flags);
}

static PyObject *m_spin_unlock_irqrestore(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "spin_unlock_irqrestore(lock, flags)");
        return NULL;
    }
    LockCore *lk = (LockCore *)args[0];
    CpuCore *cpu = cpu_of(args[0]);
    if (!cpu)
        return NULL;
    int flags = PyObject_IsTrue(args[1]);
    if (flags < 0)
        return NULL;
    PyObject *r = c_unlock(lk, cpu);
    if (!r)
        return NULL;
    Py_DECREF(r);
    if (c_irq_restore(cpu, flags) < 0 || sched_point(cpu) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int parse_sub(PyObject *v, int *sub) {
    long s = PyLong_AsLong(v);
    if (s == -1 && PyErr_Occurred())
        return -1;
    if (s < 0 || s >= MAX_SUBCLASS) {
        PyErr_Format(PyExc_ValueError, "lockdep subclass must be 0..%d, not %ld", MAX_SUBCLASS - 1, s);
        return -1;
    }
    *sub = (int)s;
    return 0;
}

/* spin_lock_nested(lock, subclass): lockdep's annotation for two locks of one class nested in
 * a known order; subclasses 0..7 of a class are distinct classes for ordering. */
static PyObject *m_spin_lock_nested(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int sub;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "spin_lock_nested(lock, subclass)");
        return NULL;
    }
    CpuCore *cpu = cpu_of(args[0]);
    if (!cpu || parse_sub(args[1], &sub) < 0 || sched_point(cpu) < 0)
        return NULL;
    return c_lock((LockCore *)args[0], cpu, sub);
}

static PyObject *m_spin_lock_irqsave_nested(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int sub;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "spin_lock_irqsave_nested(lock, subclass)");
        return NULL;
    }
    CpuCore *cpu = cpu_of(args[0]);
    if (!cpu || parse_sub(args[1], &sub) < 0 || sched_point(cpu) < 0)
        return NULL;
    int flags = cpu->masked;
    cpu->masked = 1;
    PyObject *r = c_lock((LockCore *)args[0], cpu, sub);
    if (!r) {
        cpu->masked = (char)flags;
        return NULL;
    }
    Py_DECREF(r);
    return PyBool_FromLong(flags);
}

static PyObject *m_spin_is_locked(PyObject *mod, PyObject *l) {
    return cpu_of(l) ? lock_is_locked((LockCore *)l, NULL) : NULL;
}

/* ---- RwLockCore: Xen's queued reader-writer lock ------------------------------------------
 *
 * xen/include/xen/rwlock.h and xen/common/rwlock.c (4.19): ``cnts`` holds the reader count
 * (<< 16), the writer state (bits 14-15: waiting, locked) and the writing CPU (bits 0-13);
 * the fast paths are one atomic on it, here on the lock record's L_CNTS word in the arena
 * (lock-free atomics are address-free: they work across processes on a shared mapping). The
 * wait queue (``lock->lock``, a spinlock in Xen) is the lock's POSIX semaphore; the slow
 * paths that queue and wait are Python (shm_model/rwlock.py: ``_rw_slow``), called masked.
 *
 * Readers are many, so each owner's read depth, first site and time are kept in its own
 * read-hold record (the arena's ``rholds``); only that owner writes it. The lock record's
 * owner, site and since words name the writer.
 *
 * Lockdep: a read acquisition's chain-key digit is ``rkey`` (the lock's read identity), so a
 * read and a write of one lock are distinct chains; lockdep reads the mode off the digit.
 */
#define QW_SHIFT 14
#define QW_CPUMASK ((((int64_t)1) << QW_SHIFT) - 1)
#define QW_WAITING (((int64_t)1) << QW_SHIFT)
#define QW_LOCKED (((int64_t)3) << QW_SHIFT)
#define QW_WMASK (((int64_t)3) << QW_SHIFT)
#define QR_BIAS (((int64_t)1) << (QW_SHIFT + 2))
#define S_RACQ 5 /* offset from S_ACQ */
#define RHSLOT 3

typedef struct {
    LockCore base;
    Py_ssize_t o_cnts, o_qowner;
    Py_ssize_t rh;  /* this lock's read-hold records: rh + owner * RHSLOT (depth, site, since) */
    int64_t rkey;   /* chain-key digit of a read acquisition */
} RwLockCore;

static PyTypeObject RwLockCoreType;
static PyObject *str_rw_slow, *str_bad_mode_unlock;

static inline int64_t *cnts_p(RwLockCore *self, CpuCore *cpu) { return (int64_t *)&cpu->w[self->o_cnts]; }

/* xen/include/xen/rwlock.h: _can_read_lock(cnts) */
static inline int can_read(int64_t cnts, int64_t cpu_id) {
    return !(cnts & QW_WMASK) || ((cnts & QW_WMASK) == QW_LOCKED && (cnts & QW_CPUMASK) == cpu_id);
}

static inline int64_t cpu_id(CpuCore *cpu) { return cpu->oid[0] >> 1; }

/* The chain key of a read acquisition (its own digit: a read and a write are distinct chains). */
static inline PyObject *read_key(RwLockCore *self, PyObject *held, int ctx, int m) {
    Py_ssize_t n = PyList_GET_SIZE(held);
    int64_t digit = self->rkey | ((int64_t)ctx << 1) | m;
    return n ? chain_key_digit(held, n, digit) : outer_key((LockCore *)self, 4 | ctx << 1 | m, digit);
}

/* _open_rw(o_cnts, o_qowner, rh, rkey): where the kind's own words live. */
static PyObject *rw_open(RwLockCore *self, PyObject *args) {
    Py_ssize_t o_cnts, o_qowner, rh;
    long long rkey;
    if (!PyArg_ParseTuple(args, "nnnL", &o_cnts, &o_qowner, &rh, &rkey))
        return NULL;
    self->o_cnts = o_cnts;
    self->o_qowner = o_qowner;
    self->rh = rh;
    self->rkey = rkey;
    for (int i = 4; i < 8; i++)
        Py_CLEAR(self->base.k0[i]); /* made from the old read digit */
    Py_RETURN_NONE;
}

/* The slow path (Python): queue, wait, take; returns the acquisition's site. */
static int64_t rw_slow(RwLockCore *self, CpuCore *cpu, int ctx, int m, int read) {
    PyObject *args[5] = {(PyObject *)self, (PyObject *)cpu, NULL, m ? Py_True : Py_False, read ? Py_True : Py_False};
    args[2] = PyLong_FromLong(ctx);
    if (!args[2])
        return -1;
    cpu->masked = 1;
    PyObject *r = PyObject_VectorcallMethod(str_rw_slow, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(args[2]);
    if (!r)
        return -1;
    int64_t site = PyLong_AsLongLong(r);
    Py_DECREF(r);
    return site;
}

/* Validate a new chain and add scheduling noise, as c_lock does. */
static int rw_prologue(RwLockCore *self, CpuCore *cpu, PyObject *held, PyObject *key, int m, int ctx, int trylock) {
    PyObject *ckey = trylock ? PyNumber_Invert(key) : Py_NewRef(key);
    if (!ckey)
        return -1;
    int cached = PyDict_Contains(cpu->chains, ckey);
    int r = (cached < 0 || (!cached && new_chain(cpu, (LockCore *)self, key, ckey, held, m, ctx, trylock) < 0)) ? -1 : 0;
    Py_DECREF(ckey);
    if (r == 0 && !trylock && cpu->noise > 0.0) {
        cpu->masked = 1;
        PyObject *j = PyObject_CallMethodNoArgs((PyObject *)cpu, str_jitter);
        if (!j)
            r = -1;
        Py_XDECREF(j);
    }
    return r;
}

/* Record a read acquisition: this owner's read depth (site and time at the first), the class
 * statistics (acquisitions, of which reads), the held stack. */
static inline int record_read(RwLockCore *self, CpuCore *cpu, PyObject *held, PyObject *key, int ctx, int64_t site) {
    volatile int64_t *w = cpu->w;
    Py_ssize_t rh = self->rh + cpu->oid[ctx] * RHSLOT;
    if (w[rh]++ == 0) {
        w[rh + 1] = site;
        w[rh + 2] = now_ns();
    }
    w[self->base.st] += 1;
    w[self->base.st + S_RACQ] += 1;
    if (push_held((LockCore *)self, held, key) < 0)
        return -1;
    if (cpu->trace_locks)
        c_trace(cpu, EV_ACQUIRE, 0, self->base.index, site, 1);
    return 0;
}

/* read_lock (xen/include/xen/rwlock.h: _read_lock) */
static PyObject *c_read_lock(RwLockCore *self, CpuCore *cpu) {
    int m = cpu->masked, ctx = cpu->ctx;
    PyObject *held = PyTuple_GET_ITEM(cpu->held, ctx);
    PyObject *key = read_key(self, held, ctx, m);
    if (!key)
        return NULL;
    int64_t site = capture_site();
    if (rw_prologue(self, cpu, held, key, m, ctx, 0) < 0)
        goto fail;
    int64_t cnts = __atomic_add_fetch(cnts_p(self, cpu), QR_BIAS, __ATOMIC_SEQ_CST);
    if (!can_read(cnts, cpu_id(cpu))) {
        __atomic_sub_fetch(cnts_p(self, cpu), QR_BIAS, __ATOMIC_SEQ_CST); /* the slow path's first step */
        site = rw_slow(self, cpu, ctx, m, 1);
        if (site == -1 && PyErr_Occurred())
            goto fail;
    }
    int r = record_read(self, cpu, held, key, ctx, site);
    Py_DECREF(key);
    if (r < 0 || wm_call(cpu, str_wm_acquired, self->base.o_owner) < 0)
        return NULL;
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_NONE;
fail:
    Py_DECREF(key);
    cpu->masked = (char)m;
    return NULL;
}

/* write_lock (_write_lock) */
static PyObject *c_write_lock(RwLockCore *self, CpuCore *cpu) {
    int m = cpu->masked, ctx = cpu->ctx;
    PyObject *held = PyTuple_GET_ITEM(cpu->held, ctx);
    PyObject *key = chain_key((LockCore *)self, held, PyList_GET_SIZE(held), ctx, m, 0);
    if (!key)
        return NULL;
    int64_t site = capture_site();
    if (rw_prologue(self, cpu, held, key, m, ctx, 0) < 0)
        goto fail;
    int64_t expect = 0;
    if (!__atomic_compare_exchange_n(cnts_p(self, cpu), &expect, QW_LOCKED | cpu_id(cpu), 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST)) {
        site = rw_slow(self, cpu, ctx, m, 0);
        if (site == -1 && PyErr_Occurred())
            goto fail;
    }
    int r = record_acquire((LockCore *)self, cpu, held, key, ctx, site);
    Py_DECREF(key);
    if (r < 0 || wm_call(cpu, str_wm_acquired, self->base.o_owner) < 0)
        return NULL;
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_NONE;
fail:
    Py_DECREF(key);
    cpu->masked = (char)m;
    return NULL;
}

/* read_trylock (_read_trylock) / write_trylock (_write_trylock): no dependency edge. */
static PyObject *c_rw_trylock(RwLockCore *self, CpuCore *cpu, int read) {
    int m = cpu->masked, ctx = cpu->ctx;
    PyObject *held = PyTuple_GET_ITEM(cpu->held, ctx);
    int64_t *p = cnts_p(self, cpu), me = cpu_id(cpu), cnts = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    int got = 0;
    if (read) {
        if (can_read(cnts, me)) {
            if (can_read(__atomic_add_fetch(p, QR_BIAS, __ATOMIC_SEQ_CST), me))
                got = 1;
            else
                __atomic_sub_fetch(p, QR_BIAS, __ATOMIC_SEQ_CST);
        }
    } else {
        int64_t expect = 0;
        got = !cnts && __atomic_compare_exchange_n(p, &expect, QW_LOCKED | me, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    if (!got) {
        if (cpu->trace_locks)
            c_trace(cpu, EV_TRYLOCK_FAIL, 0, self->base.index, read, 0);
        Py_RETURN_FALSE;
    }
    PyObject *key = read ? read_key(self, held, ctx, m)
                         : chain_key((LockCore *)self, held, PyList_GET_SIZE(held), ctx, m, 0);
    int64_t site = capture_site();
    if (!key || rw_prologue(self, cpu, held, key, m, ctx, 1) < 0)
        goto fail;
    int r = read ? record_read(self, cpu, held, key, ctx, site) : record_acquire((LockCore *)self, cpu, held, key, ctx, site);
    Py_DECREF(key);
    if (r < 0 || wm_call(cpu, str_wm_acquired, self->base.o_owner) < 0)
        return NULL;
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_TRUE;
fail:
    /* taken: give it back before reporting the error */
    if (read)
        __atomic_sub_fetch(p, QR_BIAS, __ATOMIC_SEQ_CST);
    else
        __atomic_and_fetch(p, ~(QW_CPUMASK | QW_WMASK), __ATOMIC_SEQ_CST);
    Py_XDECREF(key);
    cpu->masked = (char)m;
    return NULL;
}

/* read_unlock / write_unlock (_read_unlock, _write_unlock) */
static PyObject *c_rw_unlock(RwLockCore *self, CpuCore *cpu, int read) {
    int m = cpu->masked;
    volatile int64_t *wa = cpu->w;
    /* an unlock of a mode this context does not hold (read_unlock of a write hold, or of no
     * hold at all): lockdep's bad unlock balance, and nothing is released (cnts stays sane) */
    if (read ? wa[self->rh + cpu->oid[cpu->ctx] * RHSLOT] <= 0 : wa[self->base.o_owner] != cpu->oid[cpu->ctx]) {
        PyObject *args[3] = {(PyObject *)self, (PyObject *)cpu, read ? Py_True : Py_False};
        cpu->masked = 1;
        PyObject *r = PyObject_VectorcallMethod(str_bad_mode_unlock, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        cpu->masked = (char)m;
        if (!r)
            return NULL;
        Py_DECREF(r);
        if (run_pending(cpu, m) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    int ok = pop_held((LockCore *)self, cpu);
    if (ok < 0)
        return NULL;
    if (!ok) {
        if (run_pending(cpu, m) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (wm_call(cpu, str_wm_releasing, self->base.o_owner) < 0)
        return NULL;
    volatile int64_t *w = cpu->w;
    if (read) {
        Py_ssize_t rh = self->rh + cpu->oid[cpu->ctx] * RHSLOT;
        if (--w[rh] == 0)
            account_hold((LockCore *)self, w, w[rh + 2]);
        __atomic_sub_fetch(cnts_p(self, cpu), QR_BIAS, __ATOMIC_SEQ_CST);
    } else {
        account_hold((LockCore *)self, w, w[self->base.o_since]);
        w[self->base.o_owner] = NO_OWNER;
        __atomic_and_fetch(cnts_p(self, cpu), ~(QW_CPUMASK | QW_WMASK), __ATOMIC_SEQ_CST);
    }
    if (cpu->trace_locks)
        c_trace(cpu, EV_RELEASE, 0, self->base.index, read, 0);
    cpu->masked = (char)m;
    if (run_pending(cpu, m) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Helpers for the Python slow path: atomics on cnts. */
static PyObject *rw_cnts(RwLockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    return cpu ? PyLong_FromLongLong(__atomic_load_n(cnts_p(self, cpu), __ATOMIC_SEQ_CST)) : NULL;
}

static PyObject *rw_cnts_add(RwLockCore *self, PyObject *v) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    long long d = PyLong_AsLongLong(v);
    if (!cpu || (d == -1 && PyErr_Occurred()))
        return NULL;
    return PyLong_FromLongLong(__atomic_add_fetch(cnts_p(self, cpu), d, __ATOMIC_SEQ_CST));
}

static PyObject *rw_cnts_cas(RwLockCore *self, PyObject *const *args, Py_ssize_t nargs) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    if (!cpu)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_cnts_cas(old, new)");
        return NULL;
    }
    long long old = PyLong_AsLongLong(args[0]), nw = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    int64_t expect = old;
    return PyBool_FromLong(__atomic_compare_exchange_n(cnts_p(self, cpu), &expect, nw, 0, __ATOMIC_SEQ_CST,
                                                       __ATOMIC_SEQ_CST));
}

static PyObject *rw_read_held_by_me(RwLockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    if (!cpu)
        return NULL;
    volatile int64_t *w = cpu->w;
    return PyBool_FromLong(w[self->rh + cpu->oid[0] * RHSLOT] > 0 || w[self->rh + cpu->oid[1] * RHSLOT] > 0);
}

static PyObject *rw_m_read_lock(RwLockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    return cpu && sched_point(cpu) == 0 ? c_read_lock(self, cpu) : NULL;
}

static PyObject *rw_m_read_unlock(RwLockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    return cpu ? unlock_point(c_rw_unlock(self, cpu, 1), cpu) : NULL;
}

static PyObject *rw_m_write_lock(RwLockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    return cpu && sched_point(cpu) == 0 ? c_write_lock(self, cpu) : NULL;
}

static PyObject *rw_m_write_unlock(RwLockCore *self, PyObject *unused) {
    CpuCore *cpu = bound_cpu((LockCore *)self);
    return cpu ? unlock_point(c_rw_unlock(self, cpu, 0), cpu) : NULL;
}

static PyMemberDef rw_members[] = {
    {"o_cnts", T_PYSSIZET, offsetof(RwLockCore, o_cnts), READONLY, "arena word: Xen's cnts"},
    {"o_qowner", T_PYSSIZET, offsetof(RwLockCore, o_qowner), READONLY, "arena word: who holds the wait queue"},
    {"rh", T_PYSSIZET, offsetof(RwLockCore, rh), READONLY, "arena word: this lock's read-hold records"},
    {"rkey", T_LONGLONG, offsetof(RwLockCore, rkey), READONLY, "chain-key digit of a read acquisition"},
    {NULL}};

static PyMethodDef rw_methods[] = {
    {"_open_rw", (PyCFunction)rw_open, METH_VARARGS, "_open_rw(o_cnts, o_qowner, rh, rkey)"},
    {"_cnts", (PyCFunction)rw_cnts, METH_NOARGS, "atomic read of cnts"},
    {"_cnts_add", (PyCFunction)rw_cnts_add, METH_O, "atomic add to cnts; returns the new value"},
    {"_cnts_cas", (PyCFunction)(void (*)(void))rw_cnts_cas, METH_FASTCALL, "atomic compare-and-swap of cnts"},
    {"read_held_by_me", (PyCFunction)rw_read_held_by_me, METH_NOARGS, "Read-held by this CPU, in either context."},
    {"read_lock", (PyCFunction)rw_m_read_lock, METH_NOARGS, "read_lock"},
    {"read_unlock", (PyCFunction)rw_m_read_unlock, METH_NOARGS, "read_unlock"},
    {"write_lock", (PyCFunction)rw_m_write_lock, METH_NOARGS, "write_lock"},
    {"write_unlock", (PyCFunction)rw_m_write_unlock, METH_NOARGS, "write_unlock"},
    {NULL}};

static PyTypeObject RwLockCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shm_model._fastlock.RwLockCore",
    .tp_basicsize = sizeof(RwLockCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fast path of a model reader-writer lock (base of shm_model.rwlock.RwLock).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_traverse = (traverseproc)lock_traverse,
    .tp_clear = (inquiry)lock_clear,
    .tp_members = rw_members,
    .tp_methods = rw_methods,
};

/* The CPU a model rwlock is bound to, or NULL with the error set. */
static inline CpuCore *rw_cpu_of(PyObject *o) {
    if (!PyObject_TypeCheck(o, &RwLockCoreType)) {
        PyErr_Format(PyExc_TypeError, "expected a model rwlock, got %.100s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    return bound_cpu((LockCore *)o);
}

static PyObject *m_read_lock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu && sched_point(cpu) == 0 ? c_read_lock((RwLockCore *)l, cpu) : NULL;
}

static PyObject *m_read_unlock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu ? unlock_point(c_rw_unlock((RwLockCore *)l, cpu, 1), cpu) : NULL;
}

static PyObject *m_write_lock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu && sched_point(cpu) == 0 ? c_write_lock((RwLockCore *)l, cpu) : NULL;
}

static PyObject *m_write_unlock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu ? unlock_point(c_rw_unlock((RwLockCore *)l, cpu, 0), cpu) : NULL;
}

static PyObject *m_read_trylock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu && sched_point(cpu) == 0 ? c_rw_trylock((RwLockCore *)l, cpu, 1) : NULL;
}

static PyObject *m_write_trylock(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu && sched_point(cpu) == 0 ? c_rw_trylock((RwLockCore *)l, cpu, 0) : NULL;
}

/* The _irqsave forms: save, mask, take; return the flags (Xen's _read_lock_irqsave). */
static PyObject *rw_lock_irqsave(PyObject *l, int read) {
    CpuCore *cpu = rw_cpu_of(l);
    if (!cpu || sched_point(cpu) < 0)
        return NULL;
    int flags = cpu->masked;
    cpu->masked = 1;
    PyObject *r = read ? c_read_lock((RwLockCore *)l, cpu) : c_write_lock((RwLockCore *)l, cpu);
    if (!r) {
        cpu->masked = (char)flags;
        return NULL;
    }
    Py_DECREF(r);
    return PyBool_FromLong(flags);
}

static PyObject *rw_unlock_irqrestore(PyObject *const *args, Py_ssize_t nargs, int read) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (lock, flags)");
        return NULL;
    }
    CpuCore *cpu = rw_cpu_of(args[0]);
    if (!cpu)
        return NULL;
    int flags = PyObject_IsTrue(args[1]);
    if (flags < 0)
        return NULL;
    PyObject *r = c_rw_unlock((RwLockCore *)args[0], cpu, read);
    if (!r)
        return NULL;
    Py_DECREF(r);
    if (c_irq_restore(cpu, flags) < 0 || sched_point(cpu) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *m_read_lock_irqsave(PyObject *mod, PyObject *l) { return rw_lock_irqsave(l, 1); }
static PyObject *m_write_lock_irqsave(PyObject *mod, PyObject *l) { return rw_lock_irqsave(l, 0); }
static PyObject *m_read_unlock_irqrestore(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    return rw_unlock_irqrestore(args, nargs, 1);
}
static PyObject *m_write_unlock_irqrestore(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    return rw_unlock_irqrestore(args, nargs, 0);
}

static PyObject *m_rw_is_locked(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu ? PyBool_FromLong(__atomic_load_n(cnts_p((RwLockCore *)l, cpu), __ATOMIC_SEQ_CST) != 0) : NULL;
}

static PyObject *m_rw_is_write_locked(PyObject *mod, PyObject *l) {
    CpuCore *cpu = rw_cpu_of(l);
    return cpu ? PyBool_FromLong((__atomic_load_n(cnts_p((RwLockCore *)l, cpu), __ATOMIC_SEQ_CST) & QW_WMASK) ==
                                 QW_LOCKED)
               : NULL;
}

/* ---- MemWords: the shared side of weak memory (shm_model/weak.py) ---------------------------
 *
 * A relaxed location is WM_WORDS words: the newest committed value (what a plain reader sees),
 * a commit lock, the number of commits, then a ring of the last WM_HIST messages (value,
 * timestamp, site of the store, writer and its program-order number). Timestamps come from one word of the state (``gts``): the order in which
 * stores became visible to every other CPU (ARMv8 is other-multi-copy-atomic). A commit and
 * a snapshot hold the location's lock word for a few loads and stores (never across Python).
 */
#define WM_HIST 8
#define WM_ENTRY 4 /* value, ts, site, who */
#define WM_WORDS (3 + WM_ENTRY * WM_HIST)

typedef struct {
    PyObject_HEAD
    volatile int64_t *w;
    Py_buffer buf;
    int has_buf;
    Py_ssize_t nwords;
} MemWords;

static void mw_dealloc(MemWords *self) {
    if (self->has_buf)
        PyBuffer_Release(&self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int mw_init(MemWords *self, PyObject *args, PyObject *kw) {
    PyObject *mv;
    if (!PyArg_ParseTuple(args, "O", &mv))
        return -1;
    if (self->has_buf) {
        PyBuffer_Release(&self->buf);
        self->has_buf = 0;
    }
    if (PyObject_GetBuffer(mv, &self->buf, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return -1;
    self->has_buf = 1;
    if (self->buf.itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "MemWords needs a memoryview of 64-bit words");
        return -1;
    }
    self->w = (volatile int64_t *)self->buf.buf;
    self->nwords = self->buf.len / 8;
    return 0;
}

static inline int mw_ok(MemWords *self, Py_ssize_t i, Py_ssize_t n) {
    if (!self->has_buf || i < 0 || i + n > self->nwords) {
        PyErr_SetString(PyExc_IndexError, "MemWords: word out of range");
        return 0;
    }
    return 1;
}

static inline void mw_lock(volatile int64_t *l) {
    int spins = 0;
    for (;;) {
        int64_t z = 0;
        if (__atomic_compare_exchange_n(l, &z, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        if (++spins > 64)
            sched_yield();
    }
}

/* Append the location's next message (value, site, who) with the clock's next timestamp,
 * its lock held by the caller; returns the timestamp. */
static int64_t wm_append_locked(volatile int64_t *w, Py_ssize_t loc, Py_ssize_t clock, int64_t v, int64_t site,
                                int64_t who) {
    int64_t ts = __atomic_add_fetch(&w[clock], 1, __ATOMIC_SEQ_CST);
    int64_t n = w[loc + 2];
    Py_ssize_t e = loc + 3 + WM_ENTRY * (n % WM_HIST);
    w[e] = v;
    w[e + 1] = ts;
    w[e + 2] = site;
    w[e + 3] = who;
    w[loc + 2] = n + 1;
    w[loc] = v;
    return ts;
}

/* A store becomes visible to every CPU, the newest message of its location. */
static int64_t wm_commit_raw(volatile int64_t *w, Py_ssize_t loc, Py_ssize_t clock, int64_t v, int64_t site,
                             int64_t who) {
    mw_lock(&w[loc + 1]);
    int64_t ts = wm_append_locked(w, loc, clock, v, site, who);
    __atomic_store_n(&w[loc + 1], 0, __ATOMIC_RELEASE);
    return ts;
}

/* Copy the messages a load may read into out (WM_ENTRY words each), newest first, down to
 * the newest at or below ``floor``; returns how many. */
static int wm_snapshot_raw(volatile int64_t *w, Py_ssize_t loc, int64_t floor, int64_t *out) {
    int k = 0;
    mw_lock(&w[loc + 1]);
    int64_t n = w[loc + 2];
    for (int64_t i = n - 1; i >= 0 && i >= n - WM_HIST; i--) {
        Py_ssize_t e = loc + 3 + WM_ENTRY * (i % WM_HIST);
        for (int j = 0; j < WM_ENTRY; j++)
            out[WM_ENTRY * k + j] = w[e + j];
        k++;
        if (out[WM_ENTRY * (k - 1) + 1] <= floor)
            break;
    }
    __atomic_store_n(&w[loc + 1], 0, __ATOMIC_RELEASE);
    return k;
}

/* An atomic read-modify-write of a relaxed location (LDXR/STXR): under the location's lock,
 * the newest value is read, changed by op (0 add, 1 or, 2 and-not, 3 exchange) and
 * committed as the next message. Returns the timestamp; *old the value it replaced. */
static int64_t wm_rmw_raw(volatile int64_t *w, Py_ssize_t loc, Py_ssize_t clock, int op, int64_t arg, int64_t site,
                          int64_t who, int64_t *old) {
    mw_lock(&w[loc + 1]);
    int64_t o = w[loc], v;
    switch (op) {
    case 0: v = o + arg; break;
    case 1: v = o | arg; break;
    case 2: v = o & ~arg; break;
    default: v = arg; break;
    }
    int64_t ts = wm_append_locked(w, loc, clock, v, site, who);
    __atomic_store_n(&w[loc + 1], 0, __ATOMIC_RELEASE);
    *old = o;
    return ts;
}

static inline void wm_amax_raw(volatile int64_t *p, int64_t v) {
    int64_t cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        ;
}

/* commit(loc, gts, value, site, who) -> ts: the store becomes visible to all, newest of its location */
static PyObject *mw_commit(MemWords *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "commit(loc, gts, value, site, who)");
        return NULL;
    }
    Py_ssize_t loc = PyLong_AsSsize_t(args[0]), g = PyLong_AsSsize_t(args[1]);
    int64_t v = PyLong_AsLongLong(args[2]), site = PyLong_AsLongLong(args[3]), who = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred() || !mw_ok(self, loc, WM_WORDS) || !mw_ok(self, g, 1))
        return NULL;
    int64_t ts = wm_commit_raw(self->w, loc, g, v, site, who);
    return PyLong_FromLongLong(ts);
}

/* snapshot(loc, floor) -> (value, ts, site, who, ...): the messages a load may read, newest
 * first, down to the newest one at or below ``floor`` (older ones are hidden by coherence and
 * the barriers); every retained message when all are newer than ``floor``. */
static PyObject *mw_snapshot(MemWords *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "snapshot(loc, floor)");
        return NULL;
    }
    Py_ssize_t loc = PyLong_AsSsize_t(args[0]);
    int64_t floor = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred() || !mw_ok(self, loc, WM_WORDS))
        return NULL;
    int64_t out[WM_ENTRY * WM_HIST];
    int k = wm_snapshot_raw(self->w, loc, floor, out);
    PyObject *t = PyTuple_New(WM_ENTRY * k);
    if (!t)
        return NULL;
    for (int i = 0; i < WM_ENTRY * k; i++) {
        PyObject *x = PyLong_FromLongLong(out[i]);
        if (!x) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

/* amax(i, v): word i = max(word i, v), atomically (a release's view into a lock record) */
static PyObject *mw_amax(MemWords *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "amax(i, v)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    int64_t v = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred() || !mw_ok(self, i, 1))
        return NULL;
    wm_amax_raw(&self->w[i], v);
    Py_RETURN_NONE;
}

/* get(i): word i, atomically */
static PyObject *mw_get(MemWords *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (PyErr_Occurred() || !mw_ok(self, i, 1))
        return NULL;
    return PyLong_FromLongLong(__atomic_load_n(&self->w[i], __ATOMIC_SEQ_CST));
}

static PyObject *mw_release(MemWords *self, PyObject *unused) {
    if (self->has_buf) {
        self->has_buf = 0;
        self->w = NULL;
        PyBuffer_Release(&self->buf);
    }
    Py_RETURN_NONE;
}

static PyMethodDef mw_methods[] = {
    {"commit", (PyCFunction)(void (*)(void))mw_commit, METH_FASTCALL,
     "commit(loc, gts, value, site, who) -> ts: make a store visible to every CPU"},
    {"snapshot", (PyCFunction)(void (*)(void))mw_snapshot, METH_FASTCALL,
     "snapshot(loc, floor) -> flat (value, ts, site, who) tuple, newest first, down to the newest at or below floor"},
    {"amax", (PyCFunction)(void (*)(void))mw_amax, METH_FASTCALL, "amax(i, v): word i = max(word i, v)"},
    {"get", (PyCFunction)mw_get, METH_O, "get(i): word i"},
    {"release", (PyCFunction)mw_release, METH_NOARGS, "Release the buffer (unusable after)."},
    {NULL}};

static PyTypeObject MemWordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shm_model._fastlock.MemWords",
    .tp_basicsize = sizeof(MemWords),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MemWords(mv): the shared words of weak memory (relaxed locations, timestamps)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)mw_init,
    .tp_dealloc = (destructor)mw_dealloc,
    .tp_methods = mw_methods,
};

/* ---- MemCpuCore: one CPU's side of weak memory, the hot paths of shm_model.weak.MemCpu ------
 *
 * A relaxed load and store are the model's most frequent accesses, so their common path is
 * here: the store buffer (SB_MAX entries: location, value, site, epoch, program-order
 * number), the per-location coherence timestamps (an open-addressing table), the views, a
 * xorshift generator seeded by the worker's seed, the load log (the evidence of a stale read)
 * and the counters. What is rare stays in Python (shm_model/weak.py): deferring a load
 * (``_defer``), performing deferred loads (``_perform_loc``), barriers' performing, explain.
 * The semantics are weak.py's module docstring; this file only makes them cheap.
 */
#define SB_MAX 16
#define LOG_N 64
#define WM_SNAP (WM_ENTRY * WM_HIST)

typedef struct {
    int64_t loc, v, ts, wsite, who, site;
    int nsnap;
    int64_t snap[WM_SNAP];
} WmLog;

typedef struct {
    PyObject_HEAD
    volatile int64_t *w;
    Py_buffer buf;
    int has_buf;
    Py_ssize_t nwords;
    Py_ssize_t clock;
    PyObject *cpu; /* a CpuCore (its scheduler's points), or None */
    int64_t wid;
    /* store buffer */
    int sb_n, sb_cap;
    int64_t sb_loc[SB_MAX], sb_val[SB_MAX], sb_site[SB_MAX], sb_epoch[SB_MAX], sb_po[SB_MAX];
    int64_t epoch, po;
    /* views */
    int64_t vrold, vwold, vlow, last_ts, dep_floor;
    /* coherence: loc -> ts (linear probing; key 0 is empty: word 0 is never a location) */
    int64_t *ck, *cv;
    Py_ssize_t cn, ccap;
    /* choices */
    uint64_t rng;
    double p_drain, p_stale, p_defer;
    Py_ssize_t n_deferred; /* deferred loads not yet performed (kept by the Python side) */
    /* log */
    WmLog log[LOG_N];
    int64_t log_n;
    /* counters */
    int64_t n_loads, n_stores, n_stale, n_deferred_total, n_forwarded, n_commits, n_reordered;
} MemCpuCore;

static PyObject *str_defer, *str_perform_loc;

static inline uint64_t mc_next(MemCpuCore *m) {
    uint64_t x = m->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    m->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}
static inline double mc_random(MemCpuCore *m) { return (mc_next(m) >> 11) * (1.0 / 9007199254740992.0); }
static inline int64_t mc_randrange(MemCpuCore *m, int64_t n) { return (int64_t)(mc_random(m) * (double)n); }

static int mc_coh_grow(MemCpuCore *m) {
    Py_ssize_t nc = m->ccap ? 2 * m->ccap : 64;
    int64_t *k = PyMem_Calloc(nc, sizeof(int64_t)), *v = PyMem_Calloc(nc, sizeof(int64_t));
    if (!k || !v) {
        PyMem_Free(k);
        PyMem_Free(v);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < m->ccap; i++) {
        if (m->ck[i]) {
            Py_ssize_t j = (Py_ssize_t)((uint64_t)m->ck[i] * 0x9E3779B97F4A7C15ULL >> 7) & (nc - 1);
            while (k[j])
                j = (j + 1) & (nc - 1);
            k[j] = m->ck[i];
            v[j] = m->cv[i];
        }
    }
    PyMem_Free(m->ck);
    PyMem_Free(m->cv);
    m->ck = k;
    m->cv = v;
    m->ccap = nc;
    return 0;
}

static inline int64_t mc_coh_get(MemCpuCore *m, int64_t loc) {
    if (!m->ccap)
        return 0;
    Py_ssize_t j = (Py_ssize_t)((uint64_t)loc * 0x9E3779B97F4A7C15ULL >> 7) & (m->ccap - 1);
    while (m->ck[j]) {
        if (m->ck[j] == loc)
            return m->cv[j];
        j = (j + 1) & (m->ccap - 1);
    }
    return 0;
}

static inline int mc_coh_set(MemCpuCore *m, int64_t loc, int64_t ts) {
    if (2 * (m->cn + 1) > m->ccap && mc_coh_grow(m) < 0)
        return -1;
    Py_ssize_t j = (Py_ssize_t)((uint64_t)loc * 0x9E3779B97F4A7C15ULL >> 7) & (m->ccap - 1);
    while (m->ck[j] && m->ck[j] != loc)
        j = (j + 1) & (m->ccap - 1);
    if (!m->ck[j]) {
        m->ck[j] = loc;
        m->cn++;
    }
    m->cv[j] = ts;
    return 0;
}

static int mc_init(MemCpuCore *self, PyObject *args, PyObject *kw) {
    PyObject *mv, *cpu;
    long long clock, wid;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OLOLK", &mv, &clock, &cpu, &wid, &seed))
        return -1;
    if (self->has_buf) {
        PyBuffer_Release(&self->buf);
        self->has_buf = 0;
    }
    if (PyObject_GetBuffer(mv, &self->buf, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return -1;
    self->has_buf = 1;
    if (self->buf.itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "MemCpuCore needs a memoryview of 64-bit words");
        return -1;
    }
    self->w = (volatile int64_t *)self->buf.buf;
    self->nwords = self->buf.len / 8;
    self->clock = (Py_ssize_t)clock;
    Py_INCREF(cpu);
    Py_XSETREF(self->cpu, cpu);
    self->wid = wid;
    self->rng = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (!self->rng)
        self->rng = 1;
    self->sb_cap = 4;
    self->p_drain = 0.3;
    self->p_stale = 0.35;
    self->p_defer = 0.03;
    return 0;
}

static int mc_traverse(MemCpuCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->cpu);
    return 0;
}

static int mc_clear(MemCpuCore *self) {
    Py_CLEAR(self->cpu);
    return 0;
}

static void mc_dealloc(MemCpuCore *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    mc_clear(self);
    if (self->has_buf)
        PyBuffer_Release(&self->buf);
    PyMem_Free(self->ck);
    PyMem_Free(self->cv);
    tp->tp_free((PyObject *)self);
}

static inline int mc_ok(MemCpuCore *m, int64_t loc) {
    if (!m->has_buf || loc <= 0 || loc + WM_WORDS > m->nwords) {
        PyErr_SetString(PyExc_IndexError, "weak memory: not a relaxed location");
        return 0;
    }
    return 1;
}

/* A scheduling point of this CPU (controlled mode). */
static inline int mc_point(MemCpuCore *m) {
    PyObject *c = m->cpu;
    if (c == Py_None || !PyObject_TypeCheck(c, &CpuCoreType))
        return 0;
    return sched_point((CpuCore *)c);
}

/* The CPU whose trace ring records this CPU's relaxed accesses: with lock tracing on (the
 * controlled scheduler, --trace-locks), as for lock events; NULL otherwise. */
static inline CpuCore *mc_tracer(MemCpuCore *m) {
    PyObject *c = m->cpu;
    if (c == Py_None || !PyObject_TypeCheck(c, &CpuCoreType))
        return NULL;
    CpuCore *cpu = (CpuCore *)c;
    return cpu->trace_locks && cpu->has_buf ? cpu : NULL;
}

/* Commit store-buffer entry i. */
static int mc_commit_at(MemCpuCore *m, int i) {
    if (i < 0 || i >= m->sb_n) {
        PyErr_SetString(PyExc_IndexError, "no such store-buffer entry");
        return -1;
    }
    if (i)
        m->n_reordered++;
    int64_t loc = m->sb_loc[i], v = m->sb_val[i], site = m->sb_site[i], po = m->sb_po[i];
    for (int j = i; j < m->sb_n - 1; j++) {
        m->sb_loc[j] = m->sb_loc[j + 1];
        m->sb_val[j] = m->sb_val[j + 1];
        m->sb_site[j] = m->sb_site[j + 1];
        m->sb_epoch[j] = m->sb_epoch[j + 1];
        m->sb_po[j] = m->sb_po[j + 1];
    }
    m->sb_n--;
    int64_t ts = wm_commit_raw(m->w, loc, m->clock, v, site, (m->wid << 32) | po);
    if (mc_coh_set(m, loc, ts) < 0)
        return -1;
    if (ts > m->vwold)
        m->vwold = ts;
    m->n_commits++;
    CpuCore *tr = mc_tracer(m);
    if (tr)
        c_trace(tr, EV_WM_COMMIT, 0, loc, v, ts);
    return 0;
}

/* Commit one eligible store (seeded): the first of its location in the oldest epoch. 0 when
 * the buffer is empty, 1 committed, -1 error. */
static int mc_drain_one(MemCpuCore *m) {
    if (!m->sb_n)
        return 0;
    int elig[SB_MAX], ne = 0;
    int64_t ep = m->sb_epoch[0];
    for (int i = 0; i < m->sb_n && m->sb_epoch[i] == ep; i++) {
        int first = 1;
        for (int j = 0; j < i; j++)
            if (m->sb_loc[j] == m->sb_loc[i]) {
                first = 0;
                break;
            }
        if (first)
            elig[ne++] = i;
    }
    int i = ne > 1 ? elig[mc_randrange(m, ne)] : elig[0];
    return mc_commit_at(m, i) < 0 ? -1 : 1;
}

/* This CPU's deferred loads of a location are performed first (coherence): the Python side
 * keeps them (MemCpu._perform_loc). 0, or -1 on error. */
static int mc_perform_loc(MemCpuCore *m, PyObject *loc) {
    if (!m->n_deferred)
        return 0;
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)m, str_perform_loc, loc);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* A load from memory: the newest message at or below the floor, or a newer one (seeded). */
static int64_t mc_read(MemCpuCore *m, int64_t loc, int64_t site, int *err) {
    int64_t floor = mc_coh_get(m, loc);
    if (m->vlow > floor)
        floor = m->vlow;
    if (m->dep_floor) {
        if (m->dep_floor > floor)
            floor = m->dep_floor;
        m->dep_floor = 0;
    }
    WmLog *lg = &m->log[m->log_n % LOG_N];
    int k = wm_snapshot_raw(m->w, loc, floor, lg->snap);
    int c = 0;
    if (k > 1 && mc_random(m) < m->p_stale) {
        c = 1 + (int)mc_randrange(m, k - 1);
        m->n_stale++;
    }
    int64_t *msg = &lg->snap[WM_ENTRY * c];
    int64_t v = msg[0], ts = msg[1];
    if (mc_coh_set(m, loc, ts) < 0) {
        *err = 1;
        return 0;
    }
    if (ts > m->vrold)
        m->vrold = ts;
    m->last_ts = ts;
    lg->loc = loc;
    lg->v = v;
    lg->ts = ts;
    lg->wsite = msg[2];
    lg->who = msg[3];
    lg->site = site;
    lg->nsnap = k;
    m->log_n++;
    CpuCore *tr = mc_tracer(m);
    if (tr)
        c_trace(tr, EV_WM_LOAD, c, loc, v, ts);
    return v;
}

/* load(loc, site=None): READ_ONCE */
static PyObject *mc_load(MemCpuCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "load(loc, site=None)");
        return NULL;
    }
    int64_t loc = PyLong_AsLongLong(args[0]);
    if ((loc == -1 && PyErr_Occurred()) || !mc_ok(self, loc))
        return NULL;
    if (mc_point(self) < 0)
        return NULL;
    if (mc_perform_loc(self, args[0]) < 0)
        return NULL;
    /* a CPU that only loads (a spin on a flag) still drains: its stores become visible */
    if (self->sb_n && mc_random(self) < self->p_drain && mc_drain_one(self) < 0)
        return NULL;
    self->n_loads++;
    for (int i = self->sb_n - 1; i >= 0; i--)
        if (self->sb_loc[i] == loc) {
            self->n_forwarded++;
            return PyLong_FromLongLong(self->sb_val[i]);
        }
    int64_t site;
    if (nargs == 2 && args[1] != Py_None) {
        site = PyLong_AsLongLong(args[1]);
        if (site == -1 && PyErr_Occurred())
            return NULL;
    } else
        site = capture_site();
    if (!self->dep_floor && self->p_defer > 0.0 && mc_random(self) < self->p_defer) {
        self->n_deferred_total++;
        PyObject *s = PyLong_FromLongLong(site);
        if (!s)
            return NULL;
        PyObject *a[3] = {(PyObject *)self, args[0], s};
        PyObject *r = PyObject_VectorcallMethod(str_defer, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(s);
        return r;
    }
    int err = 0;
    int64_t v = mc_read(self, loc, site, &err);
    if (err)
        return NULL;
    return PyLong_FromLongLong(v);
}

/* _read(loc, site): perform a load from memory now (no forwarding, no deferral) */
static PyObject *mc_read_py(MemCpuCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_read(loc, site)");
        return NULL;
    }
    int64_t loc = PyLong_AsLongLong(args[0]), site = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred() || !mc_ok(self, loc))
        return NULL;
    int err = 0;
    int64_t v = mc_read(self, loc, site, &err);
    if (err)
        return NULL;
    return PyLong_FromLongLong(v);
}

/* store(loc, v, site=None): WRITE_ONCE, into the store buffer */
static PyObject *mc_store(MemCpuCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "store(loc, v, site=None)");
        return NULL;
    }
    int64_t loc = PyLong_AsLongLong(args[0]);
    if ((loc == -1 && PyErr_Occurred()) || !mc_ok(self, loc))
        return NULL;
    if (mc_point(self) < 0)
        return NULL;
    int64_t v = PyLong_AsLongLong(args[1]); /* a Deferred is performed here: __index__ (a data dependency) */
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (mc_perform_loc(self, args[0]) < 0)
        return NULL;
    int64_t site;
    if (nargs == 3 && args[2] != Py_None) {
        site = PyLong_AsLongLong(args[2]);
        if (site == -1 && PyErr_Occurred())
            return NULL;
    } else
        site = capture_site();
    if (self->sb_n >= SB_MAX && mc_drain_one(self) < 0)
        return NULL;
    int i = self->sb_n++;
    self->sb_loc[i] = loc;
    self->sb_val[i] = v;
    self->sb_site[i] = site;
    self->sb_epoch[i] = self->epoch;
    self->sb_po[i] = ++self->po;
    self->n_stores++;
    CpuCore *tr = mc_tracer(self);
    if (tr)
        c_trace(tr, EV_WM_STORE, 0, loc, v, 0);
    if (self->sb_n > self->sb_cap || mc_random(self) < self->p_drain) {
        if (mc_drain_one(self) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mc_drain_one_py(MemCpuCore *self, PyObject *unused) {
    int r = mc_drain_one(self);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *mc_drain_py(MemCpuCore *self, PyObject *unused) {
    int r;
    while ((r = mc_drain_one(self)) > 0)
        ;
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mc_commit_at_py(MemCpuCore *self, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (mc_commit_at(self, (int)i) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* wmb: close the store buffer's epoch */
static PyObject *mc_wmb(MemCpuCore *self, PyObject *unused) {
    if (mc_point(self) < 0)
        return NULL;
    if (self->sb_n)
        self->epoch++;
    Py_RETURN_NONE;
}

/* commit_direct(loc, v, site): a store that bypasses the buffer (a release, after it drained) */
static PyObject *mc_commit_direct(MemCpuCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "commit_direct(loc, v, site)");
        return NULL;
    }
    int64_t loc = PyLong_AsLongLong(args[0]), v = PyLong_AsLongLong(args[1]), site = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred() || !mc_ok(self, loc))
        return NULL;
    if (self->sb_n >= SB_MAX && mc_drain_one(self) < 0)
        return NULL;
    /* as the buffer's newest entry, committed at once */
    int i = self->sb_n++;
    self->sb_loc[i] = loc;
    self->sb_val[i] = v;
    self->sb_site[i] = site;
    self->sb_epoch[i] = self->epoch;
    self->sb_po[i] = ++self->po;
    self->n_stores++;
    if (mc_commit_at(self, i) < 0) /* i is 0 after the release's drain: not counted as a reordering */
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mc_get_sb(MemCpuCore *self, void *closure) {
    PyObject *l = PyList_New(self->sb_n);
    if (!l)
        return NULL;
    for (int i = 0; i < self->sb_n; i++) {
        PyObject *e = Py_BuildValue("[LLLLL]", self->sb_loc[i], self->sb_val[i], self->sb_site[i], self->sb_epoch[i],
                                    self->sb_po[i]);
        if (!e) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, e);
    }
    return l;
}

static PyObject *mc_get_sb_locs(MemCpuCore *self, void *closure) {
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (int i = 0; i < self->sb_n; i++) {
        PyObject *k = PyLong_FromLongLong(self->sb_loc[i]);
        PyObject *old = k ? PyDict_GetItemWithError(d, k) : NULL;
        long n = old ? PyLong_AsLong(old) : 0;
        PyObject *nv = k ? PyLong_FromLong(n + 1) : NULL;
        if (!k || !nv || PyDict_SetItem(d, k, nv) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(nv);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(nv);
    }
    return d;
}

static PyObject *mc_get_stats(MemCpuCore *self, void *closure) {
    return Py_BuildValue("{sLsLsLsLsLsLsL}", "loads", self->n_loads, "stores", self->n_stores, "stale_reads",
                         self->n_stale, "deferred", self->n_deferred_total, "forwarded", self->n_forwarded, "commits",
                         self->n_commits, "reordered_commits", self->n_reordered);
}

static PyObject *mc_get_nsb(MemCpuCore *self, void *closure) { return PyLong_FromLong(self->sb_n); }

/* log(): the recent loads, oldest first: (loc, value, ts, writer's site, who, site, snapshot) */
static PyObject *mc_log(MemCpuCore *self, PyObject *unused) {
    int64_t first = self->log_n > LOG_N ? self->log_n - LOG_N : 0;
    PyObject *l = PyList_New(0);
    if (!l)
        return NULL;
    for (int64_t i = first; i < self->log_n; i++) {
        WmLog *g = &self->log[i % LOG_N];
        PyObject *snap = PyTuple_New(WM_ENTRY * g->nsnap);
        if (!snap) {
            Py_DECREF(l);
            return NULL;
        }
        for (int j = 0; j < WM_ENTRY * g->nsnap; j++)
            PyTuple_SET_ITEM(snap, j, PyLong_FromLongLong(g->snap[j]));
        PyObject *e = Py_BuildValue("(LLLLLLN)", g->loc, g->v, g->ts, g->wsite, g->who, g->site, snap);
        if (!e || PyList_Append(l, e) < 0) {
            Py_XDECREF(e);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(e);
    }
    return l;
}

/* rmw(loc, op, arg) -> old: an atomic read-modify-write (LDXR/STXR) of a relaxed location,
 * relaxed: op 0 add, 1 or, 2 and-not, 3 exchange. This CPU's deferred loads and buffered
 * stores of loc go first (coherence: the buffer commits in order up to its last store to
 * loc); the change is a new message at once, read from the newest. Barriers around it are
 * the caller's (Xen's test_and_* are followed by a full barrier: shm_model.weak). */
static PyObject *mc_rmw(MemCpuCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rmw(loc, op, arg)");
        return NULL;
    }
    int64_t loc = PyLong_AsLongLong(args[0]);
    long op = PyLong_AsLong(args[1]);
    int64_t arg = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred() || !mc_ok(self, loc))
        return NULL;
    if (op < 0 || op > 3) {
        PyErr_SetString(PyExc_ValueError, "rmw: op is 0 add, 1 or, 2 and-not, 3 exchange");
        return NULL;
    }
    if (mc_point(self) < 0)
        return NULL;
    if (mc_perform_loc(self, args[0]) < 0)
        return NULL;
    int last = -1;
    for (int i = 0; i < self->sb_n; i++)
        if (self->sb_loc[i] == loc)
            last = i;
    for (; last >= 0; last--)
        if (mc_commit_at(self, 0) < 0)
            return NULL;
    int64_t site = capture_site(), old;
    int64_t ts = wm_rmw_raw(self->w, loc, self->clock, (int)op, arg, site, (self->wid << 32) | ++self->po, &old);
    if (mc_coh_set(self, loc, ts) < 0)
        return NULL;
    if (ts > self->vrold)
        self->vrold = ts;
    if (ts > self->vwold)
        self->vwold = ts;
    self->n_commits++;
    CpuCore *tr = mc_tracer(self);
    if (tr)
        c_trace(tr, EV_WM_COMMIT, 0, loc, self->w[loc], ts);
    return PyLong_FromLongLong(old);
}

/* floor(loc): the timestamp a load of loc issued now could read no older than (coherence with
 * this CPU's last access of loc, and its read view); changes nothing */
static PyObject *mc_floor(MemCpuCore *self, PyObject *arg) {
    int64_t loc = PyLong_AsLongLong(arg);
    if ((loc == -1 && PyErr_Occurred()) || !mc_ok(self, loc))
        return NULL;
    int64_t f = mc_coh_get(self, loc);
    if (self->vlow > f)
        f = self->vlow;
    if (self->dep_floor > f)
        f = self->dep_floor;
    return PyLong_FromLongLong(f);
}

static PyObject *mc_random_py(MemCpuCore *self, PyObject *unused) { return PyFloat_FromDouble(mc_random(self)); }

static PyObject *mc_randrange_py(MemCpuCore *self, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "randrange of an empty range");
        return NULL;
    }
    return PyLong_FromLongLong(mc_randrange(self, n));
}

static PyObject *mc_release_buf(MemCpuCore *self, PyObject *unused) {
    if (self->has_buf) {
        self->has_buf = 0;
        self->w = NULL;
        PyBuffer_Release(&self->buf);
    }
    Py_RETURN_NONE;
}

static PyMemberDef mc_members[] = {
    {"wid", T_LONGLONG, offsetof(MemCpuCore, wid), READONLY, "the worker"},
    {"clock", T_PYSSIZET, offsetof(MemCpuCore, clock), READONLY, "the clock word"},
    {"vrold", T_LONGLONG, offsetof(MemCpuCore, vrold), 0, "newest timestamp read"},
    {"vwold", T_LONGLONG, offsetof(MemCpuCore, vwold), 0, "newest timestamp written"},
    {"vlow", T_LONGLONG, offsetof(MemCpuCore, vlow), 0, "read floor of every load (barriers, acquires)"},
    {"last_ts", T_LONGLONG, offsetof(MemCpuCore, last_ts), 0, "timestamp of the last load"},
    {"dep_floor", T_LONGLONG, offsetof(MemCpuCore, dep_floor), 0, "floor of the next load (a dependency)"},
    {"epoch", T_LONGLONG, offsetof(MemCpuCore, epoch), 0, "the store buffer's current epoch (smp_wmb)"},
    {"p_drain", T_DOUBLE, offsetof(MemCpuCore, p_drain), 0, "probability a store commits a buffered store"},
    {"p_stale", T_DOUBLE, offsetof(MemCpuCore, p_stale), 0, "probability a load reads an older allowed message"},
    {"p_defer", T_DOUBLE, offsetof(MemCpuCore, p_defer), 0, "probability a load is deferred to its first use"},
    {"n_deferred", T_PYSSIZET, offsetof(MemCpuCore, n_deferred), 0, "deferred loads not yet performed"},
    {"sb_cap", T_INT, offsetof(MemCpuCore, sb_cap), 0, "stores buffered before the oldest eligible commits"},
    {NULL}};

static PyGetSetDef mc_getset[] = {
    {"sb", (getter)mc_get_sb, NULL, "the store buffer: [loc, value, site, epoch, po] oldest first (a copy)", NULL},
    {"sb_locs", (getter)mc_get_sb_locs, NULL, "loc -> buffered stores of it (a copy)", NULL},
    {"n_sb", (getter)mc_get_nsb, NULL, "stores buffered", NULL},
    {"stats", (getter)mc_get_stats, NULL, "counters", NULL},
    {NULL}};

static PyMethodDef mc_methods[] = {
    {"load", (PyCFunction)(void (*)(void))mc_load, METH_FASTCALL, "load(loc, site=None): READ_ONCE"},
    {"store", (PyCFunction)(void (*)(void))mc_store, METH_FASTCALL, "store(loc, v, site=None): WRITE_ONCE"},
    {"_read", (PyCFunction)(void (*)(void))mc_read_py, METH_FASTCALL, "_read(loc, site): perform a load now"},
    {"drain_one", (PyCFunction)mc_drain_one_py, METH_NOARGS, "commit one eligible buffered store"},
    {"drain", (PyCFunction)mc_drain_py, METH_NOARGS, "commit every buffered store"},
    {"commit_at", (PyCFunction)mc_commit_at_py, METH_O, "commit store-buffer entry i"},
    {"commit_direct", (PyCFunction)(void (*)(void))mc_commit_direct, METH_FASTCALL,
     "commit_direct(loc, v, site): a store visible at once (after a drain: a release)"},
    {"wmb", (PyCFunction)mc_wmb, METH_NOARGS, "smp_wmb"},
    {"log", (PyCFunction)mc_log, METH_NOARGS, "recent loads, oldest first"},
    {"floor", (PyCFunction)mc_floor, METH_O, "floor(loc): the oldest timestamp a load of loc may read now"},
    {"rmw", (PyCFunction)(void (*)(void))mc_rmw, METH_FASTCALL,
     "rmw(loc, op, arg) -> old: atomic read-modify-write (0 add, 1 or, 2 and-not, 3 exchange), relaxed"},
    {"random", (PyCFunction)mc_random_py, METH_NOARGS, "the CPU's seeded generator: a float in [0, 1)"},
    {"randrange", (PyCFunction)mc_randrange_py, METH_O, "the CPU's seeded generator: an int in [0, n)"},
    {"_release_buffer", (PyCFunction)mc_release_buf, METH_NOARGS, "release the words (unusable after)"},
    {NULL}};

static PyTypeObject MemCpuCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shm_model._fastlock.MemCpuCore",
    .tp_basicsize = sizeof(MemCpuCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "MemCpuCore(mv, clock, cpu, wid, seed): one CPU's weak memory (base of shm_model.weak.MemCpu)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)mc_init,
    .tp_dealloc = (destructor)mc_dealloc,
    .tp_traverse = (traverseproc)mc_traverse,
    .tp_clear = (inquiry)mc_clear,
    .tp_members = mc_members,
    .tp_getset = mc_getset,
    .tp_methods = mc_methods,
};

static PyMethodDef module_methods[] = {
    {"spin_lock", m_spin_lock, METH_O, "Take lock with interrupts as they are."},
    {"spin_unlock", m_spin_unlock, METH_O, "Release lock."},
    {"spin_trylock", m_spin_trylock, METH_O, "Take lock if it is free; return whether it was taken."},
    {"spin_lock_irq", m_spin_lock_irq, METH_O,
     "Disable interrupts, then take lock (spin_unlock_irq enables them again)."},
    {"spin_unlock_irq", m_spin_unlock_irq, METH_O, "Release lock, then enable interrupts."},
    {"spin_lock_irqsave", m_spin_lock_irqsave, METH_O,
     "Save the interrupt state, disable interrupts, take lock; return the flags."},
    {"spin_unlock_irqrestore", (PyCFunction)(void (*)(void))m_spin_unlock_irqrestore, METH_FASTCALL,
     "Release lock, then restore the interrupt state saved by spin_lock_irqsave."},
    {"spin_is_locked", m_spin_is_locked, METH_O, "Held by anyone."},
    {"spin_lock_nested", (PyCFunction)(void (*)(void))m_spin_lock_nested, METH_FASTCALL,
     "spin_lock_nested(lock, subclass): take lock as subclass 0..7 of its class (lockdep's nesting annotation)."},
    {"spin_lock_irqsave_nested", (PyCFunction)(void (*)(void))m_spin_lock_irqsave_nested, METH_FASTCALL,
     "spin_lock_irqsave_nested(lock, subclass): as spin_lock_irqsave, as that subclass; returns the flags."},
    {"read_lock", m_read_lock, METH_O, "Take rwlock for reading (Xen's _read_lock)."},
    {"read_unlock", m_read_unlock, METH_O, "Release a read hold."},
    {"write_lock", m_write_lock, METH_O, "Take rwlock for writing (Xen's _write_lock)."},
    {"write_unlock", m_write_unlock, METH_O, "Release the write hold."},
    {"read_trylock", m_read_trylock, METH_O, "Take rwlock for reading if that needs no wait."},
    {"write_trylock", m_write_trylock, METH_O, "Take rwlock for writing if it is free."},
    {"read_lock_irqsave", m_read_lock_irqsave, METH_O, "Save and mask interrupts, read_lock; return the flags."},
    {"write_lock_irqsave", m_write_lock_irqsave, METH_O, "Save and mask interrupts, write_lock; return the flags."},
    {"read_unlock_irqrestore", (PyCFunction)(void (*)(void))m_read_unlock_irqrestore, METH_FASTCALL,
     "read_unlock, then restore the interrupt state."},
    {"write_unlock_irqrestore", (PyCFunction)(void (*)(void))m_write_unlock_irqrestore, METH_FASTCALL,
     "write_unlock, then restore the interrupt state."},
    {"rw_is_locked", m_rw_is_locked, METH_O, "Held by anyone, for reading or writing (Xen's _rw_is_locked)."},
    {"rw_is_write_locked", m_rw_is_write_locked, METH_O, "Held for writing (Xen's _rw_is_write_locked)."},
    {"_set_internal", m_set_internal, METH_O, "Register an instrumentation file's co_filename object."},
    {"capture_site", m_capture_site, METH_NOARGS, "The site of the first non-instrumentation caller."},
    {NULL}};

static struct PyModuleDef fastlock_module = {
    PyModuleDef_HEAD_INIT, "shm_model._fastlock",
    "The lock fast path of shm_model in C (see the comment at the top of _fastlock.c).", -1, module_methods};

PyMODINIT_FUNC PyInit__fastlock(void) {
#define INTERN(v, s)                                                                                                   \
    if (!(v = PyUnicode_InternFromString(s)))                                                                          \
        return NULL;
    INTERN(str_new_chain, "new_chain");
    INTERN(str_wm_acquired, "acquired");
    INTERN(str_defer, "_defer");
    INTERN(str_perform_loc, "_perform_loc");
    INTERN(str_wm_releasing, "releasing");
    INTERN(str_jitter, "jitter");
    INTERN(str_contended, "_contended");
    INTERN(str_unlock_out_of_order, "_unlock_out_of_order");
    INTERN(str_run_irqs, "run_irqs");
    INTERN(str_irqs_enabled_holding, "irqs_enabled_holding");
    INTERN(str_point, "point");
    INTERN(str_rw_slow, "_rw_slow");
    INTERN(str_bad_mode_unlock, "_bad_mode_unlock");
    RwLockCoreType.tp_base = &LockCoreType;
    if (PyType_Ready(&CpuCoreType) < 0 || PyType_Ready(&LockCoreType) < 0 || PyType_Ready(&RwLockCoreType) < 0 ||
        PyType_Ready(&MemWordsType) < 0 || PyType_Ready(&MemCpuCoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastlock_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "CpuCore", (PyObject *)&CpuCoreType) < 0 ||
        PyModule_AddObjectRef(m, "LockCore", (PyObject *)&LockCoreType) < 0 ||
        PyModule_AddObjectRef(m, "RwLockCore", (PyObject *)&RwLockCoreType) < 0 ||
        PyModule_AddObjectRef(m, "MemWords", (PyObject *)&MemWordsType) < 0 ||
        PyModule_AddObjectRef(m, "MemCpuCore", (PyObject *)&MemCpuCoreType) < 0 ||
        PyModule_AddIntConstant(m, "WM_HIST", WM_HIST) < 0 || PyModule_AddIntConstant(m, "WM_ENTRY", WM_ENTRY) < 0 || PyModule_AddIntConstant(m, "WM_WORDS", WM_WORDS) < 0 ||
        PyModule_AddIntConstant(m, "KEY_DIGIT_BITS", KEY_DIGIT_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
