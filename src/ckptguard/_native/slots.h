/* Shared by the native modules (included, not compiled on its own): reading and writing
 * the slots of a plain ``__slots__`` class without going through attribute lookup.
 *
 * One check for every module, so the copies cannot drift: a slot is used only when its
 * member descriptor says it is an object slot (T_OBJECT_EX) that lies inside the
 * instance. */
#ifndef CKPTGUARD_NATIVE_SLOTS_H
#define CKPTGUARD_NATIVE_SLOTS_H

#include <Python.h>
#include <structmember.h>

/* 1 when instances of ``t`` are plain slots objects: no ``__dict__``, fixed size. */
static inline int ckg_plain_slots_class(const PyTypeObject *t) {
    return t->tp_dictoffset == 0 && t->tp_itemsize == 0;
}

/* The offset in instances of ``t`` of the object slot that ``descr`` (an attribute of
 * ``t``) describes, or -1 when it is not one: not a member descriptor, not T_OBJECT_EX,
 * read-only while ``writable`` is asked for, or not inside the instance. Sets no
 * exception. */
static inline Py_ssize_t ckg_object_slot(const PyTypeObject *t, PyObject *descr,
                                         int writable) {
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
        return -1;
    const PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != T_OBJECT_EX || (writable && (m->flags & READONLY)))
        return -1;
    if (m->offset < (Py_ssize_t)sizeof(PyObject) ||
        m->offset + (Py_ssize_t)sizeof(PyObject *) > t->tp_basicsize)
        return -1;
    return m->offset;
}

#endif
