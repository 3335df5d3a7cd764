"""The PyTorch Knowledge Distillation Tutorial's own code: its models, loss formulas and loops.

Kept verbatim in substance (CPU, no device moves) so that the parity fixture
(`tests/reference/make_reference.py`) and the side-by-side benchmark (`python -m bench`)
run exactly what the tutorial runs. Needs torch (`pip install -e ".[bench]"`); nothing
else in kdjax imports this module.
"""

from __future__ import annotations

import torch
import torch.nn as nn

T, SOFT_TARGET_LOSS_WEIGHT, CE_LOSS_WEIGHT = 2.0, 0.25, 0.75


# ---- The tutorial's models, as published. ----
class DeepNN(nn.Module):
    def __init__(self, num_classes=10):
        super(DeepNN, self).__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2048, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes)
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


class LightNN(nn.Module):
    def __init__(self, num_classes=10):
        super(LightNN, self).__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes)
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


class ModifiedDeepNNCosine(DeepNN):
    def forward(self, x):
        x = self.features(x)
        flattened_conv_output = torch.flatten(x, 1)
        x = self.classifier(flattened_conv_output)
        flattened_conv_output_after_pooling = torch.nn.functional.avg_pool1d(flattened_conv_output, 2)
        return x, flattened_conv_output_after_pooling


class ModifiedLightNNCosine(LightNN):
    def forward(self, x):
        x = self.features(x)
        flattened_conv_output = torch.flatten(x, 1)
        x = self.classifier(flattened_conv_output)
        return x, flattened_conv_output


class ModifiedDeepNNRegressor(DeepNN):
    def forward(self, x):
        x = self.features(x)
        conv_feature_map = x
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x, conv_feature_map


class ModifiedLightNNRegressor(LightNN):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.regressor = nn.Sequential(nn.Conv2d(16, 32, kernel_size=3, padding=1))

    def forward(self, x):
        x = self.features(x)
        regressor_output = self.regressor(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x, regressor_output


# ---- The tutorial's loss computations, one batch each. ----
ce_loss = nn.CrossEntropyLoss()
cosine_loss = nn.CosineEmbeddingLoss()
mse_loss = nn.MSELoss()


def loss_ce(student, teacher, inputs, labels):
    return ce_loss(student(inputs), labels)


def loss_kd(student, teacher, inputs, labels):
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    student_logits = student(inputs)
    soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
    soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
    soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)
    label_loss = ce_loss(student_logits, labels)
    return SOFT_TARGET_LOSS_WEIGHT * soft_targets_loss + CE_LOSS_WEIGHT * label_loss


def loss_cosine(student, teacher, inputs, labels):
    with torch.no_grad():
        _, teacher_hidden_representation = teacher(inputs)
    student_logits, student_hidden_representation = student(inputs)
    hidden_rep_loss = cosine_loss(
        student_hidden_representation, teacher_hidden_representation, target=torch.ones(inputs.size(0))
    )
    label_loss = ce_loss(student_logits, labels)
    return SOFT_TARGET_LOSS_WEIGHT * hidden_rep_loss + CE_LOSS_WEIGHT * label_loss


def loss_hint(student, teacher, inputs, labels):
    with torch.no_grad():
        _, teacher_feature_map = teacher(inputs)
    student_logits, regressor_feature_map = student(inputs)
    hidden_rep_loss = mse_loss(regressor_feature_map, teacher_feature_map)
    label_loss = ce_loss(student_logits, labels)
    return SOFT_TARGET_LOSS_WEIGHT * hidden_rep_loss + CE_LOSS_WEIGHT * label_loss


OBJECTIVES = {
    "ce": (LightNN, DeepNN, loss_ce),
    "kd": (LightNN, DeepNN, loss_kd),
    "cosine": (ModifiedLightNNCosine, ModifiedDeepNNCosine, loss_cosine),
    "hint": (ModifiedLightNNRegressor, ModifiedDeepNNRegressor, loss_hint),
}


# ---- The tutorial's training loops and test, for the end-to-end benchmark. ----
def train(model, train_loader, epochs, learning_rate):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(epochs):
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()


def train_distillation(teacher, student, train_loader, epochs, learning_rate, loss_fn):
    """The shared body of the tutorial's train_knowledge_distillation / train_cosine_loss / train_mse_loss."""
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(student, teacher, inputs, labels)
            loss.backward()
            optimizer.step()


def test(model, test_loader):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in test_loader:
            outputs = model(inputs)
            if isinstance(outputs, tuple):
                outputs = outputs[0]
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return 100 * correct / total
