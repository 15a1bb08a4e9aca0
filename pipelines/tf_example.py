"""tf.train.Example protos without importing TensorFlow.

Beam workers should stay light: importing TensorFlow costs seconds and hundreds
of MB per worker process, only to reach six small protobuf messages. These are
the same messages (`tensorflow/core/example/{example,feature}.proto`: same
package, names and field numbers, hence the same wire format), built from a
descriptor in a private pool so they never clash with TensorFlow's own classes.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="tapestry/tf_example.proto", package="tensorflow", syntax="proto3")

    def message(name, fields, nested=()):
        msg = fd.message_type.add(name=name)
        for field_name, number, ftype, label, type_name, packed in fields:
            f = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if packed:
                f.options.packed = True
        for n in nested:
            msg.nested_type.add().CopyFrom(n)
        return msg

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, _F.TYPE_BYTES, rep, None, False)])
    message("FloatList", [("value", 1, _F.TYPE_FLOAT, rep, None, True)])
    message("Int64List", [("value", 1, _F.TYPE_INT64, rep, None, True)])
    feature = message("Feature", [
        ("bytes_list", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", False),
        ("float_list", 2, _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", False),
        ("int64_list", 3, _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", False),
    ])
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Features", [("feature", 1, _F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", False)],
            nested=[entry])
    message("Example", [("features", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.Features", False)])
    return fd


@functools.cache
def example_class():
    """The `tensorflow.Example` message class (wire-compatible with tf.train.Example)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
