"""`tf.train.Example` message classes without TensorFlow.

The record contract is a serialized `tf.train.Example` so TFDS, big_vision and TF tooling read our
shards. Importing TensorFlow (~600 MB) only to build that message would put TF into the trainer's and
the evaluator's images, so this module rebuilds the same three messages (same package, names and field
numbers as tensorflow/core/example/{example,feature}.proto) from a descriptor at import time. The wire
format is therefore identical; `tests/test_record.py` checks bytes against real TensorFlow.

A private DescriptorPool keeps these classes from clashing with TensorFlow's own when both are loaded.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="locca/tensorflow_example.proto", package="tensorflow", syntax="proto3"
    )

    def add_list(name: str, field_type: int, packed: bool) -> None:
        msg = fd.message_type.add(name=name)
        field = msg.field.add(name="value", number=1, label=_F.LABEL_REPEATED, type=field_type)
        if packed:
            field.options.packed = True

    add_list("BytesList", _F.TYPE_BYTES, packed=False)
    add_list("FloatList", _F.TYPE_FLOAT, packed=True)
    add_list("Int64List", _F.TYPE_INT64, packed=True)

    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
        [("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")], 1
    ):
        feature.field.add(
            name=name,
            number=number,
            label=_F.LABEL_OPTIONAL,
            type=_F.TYPE_MESSAGE,
            type_name=f".tensorflow.{type_name}",
            oneof_index=0,
        )

    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    entry.field.add(
        name="value",
        number=2,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.Feature",
    )
    features.field.add(
        name="feature",
        number=1,
        label=_F.LABEL_REPEATED,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.Features.FeatureEntry",
    )

    example = fd.message_type.add(name="Example")
    example.field.add(
        name="features",
        number=1,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.Features",
    )
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())

Example = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.Example"))
Feature = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.Feature"))
